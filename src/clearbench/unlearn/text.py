"""Run one registered unlearning method on the original model of a split."""

from __future__ import annotations

import time

import torch

from clearbench.train.loop import Diverged, optimize
from clearbench.train.qa import batches
from clearbench.train.text import finish_adapter_run, qa_rows, start_adapter_run
from clearbench.unlearn.methods import METHODS, Context, lora_l1


def unlearn_steps(forget, retain, batch_size: int, epochs: int, gen: torch.Generator):
    """Epochs over the forget set; each forget batch is paired with a random retain batch."""
    for _ in range(epochs):
        for f_rows in batches(forget, batch_size, gen):
            pick = torch.randint(len(retain), (len(f_rows),), generator=gen).tolist()
            yield f_rows, [retain[i] for i in pick]


def unlearn(original_dir: str, forget_path: str, retain_path: str, out_dir: str, hp: dict) -> dict:
    method = hp["method"]
    if method not in METHODS:
        raise ValueError(f"unlearn.method: unknown method '{method}' (known: {', '.join(METHODS)})")
    out, model, tok, meta, gen = start_adapter_run(original_dir, out_dir, hp)
    ctx = Context(model=model, tok=tok, max_len=hp["max_len"], hp=hp)
    objective, l1 = METHODS[method], hp["l1_lambda"]

    def step_loss(pair):
        loss = objective(ctx, *pair)
        return loss + l1 * lora_l1(model) if l1 else loss

    forget, retain = qa_rows(forget_path), qa_rows(retain_path)
    total = hp["epochs"] * -(-len(forget) // hp["batch_size"])
    start, status, losses = time.perf_counter(), "ok", []
    try:
        losses = optimize(
            model,
            unlearn_steps(forget, retain, hp["batch_size"], hp["epochs"], gen),
            step_loss,
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            total=total,
            desc=f"unlearn {out.name}",
        )
    except Diverged:
        status = "diverged"
    return finish_adapter_run(out, model, meta, status, time.perf_counter() - start, losses)
