"""Run one registered unlearning method on the original model of a split."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from clearbench.models.factory import load_model, load_tokenizer, save_chain
from clearbench.train.loop import Diverged, optimize
from clearbench.train.qa import batches
from clearbench.train.text import add_lora, qa_rows, save_adapter, seeded
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
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model, meta = load_model(original_dir)
    tok = load_tokenizer(meta["base"])
    gen = seeded(hp["seed"])
    model = add_lora(model, hp["lora"])
    ctx = Context(model=model, tok=tok, max_len=hp["max_len"], hp=hp)
    objective, l1 = METHODS[method], hp["l1_lambda"]

    def step_loss(pair):
        loss = objective(ctx, *pair)
        return loss + l1 * lora_l1(model) if l1 else loss

    forget, retain = qa_rows(forget_path), qa_rows(retain_path)
    total = hp["epochs"] * -(-len(forget) // hp["batch_size"])
    start = time.perf_counter()
    status, losses, adapters = "ok", [], list(meta["adapters"])
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
        adapters.append(save_adapter(model, out))
    except Diverged:
        status = "diverged"  # no adapter: a NaN model is never evaluated
    save_chain(
        out,
        base=meta["base"],
        adapters=adapters,
        status=status,
        rte_seconds=time.perf_counter() - start,
        final_loss=losses[-1] if losses else None,
    )
    return {"status": status}
