"""Run one unlearning method, or train DPO's reference, on the original model of a track.

A `Track` supplies the forget and retain samples and how to encode them (`text_track`,
`vlm_track`); the rest is the same for every track: the "I don't know" answers, forget batches
paired with random retain batches, the DPO reference, the L1 penalty, divergence as a status,
and the loss of every step by term in `losses.csv` next to the adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from clearbench.compute import compute_hp, to_device
from clearbench.data.idk import idk_answer
from clearbench.data.text import read_qa
from clearbench.io import atomic_path
from clearbench.models.factory import (
    load_image_processor,
    load_model,
    load_tokenizer,
    read_model_json,
    save_chain,
    trusts_remote_code,
)
from clearbench.train.loop import Diverged, optimize
from clearbench.train.qa import answer_outputs, batches, collate, encode
from clearbench.train.text import finish_adapter_run, fresh_dir, start_adapter_run
from clearbench.train.vqa import Sample, Vision
from clearbench.unlearn.methods import METHODS, Context, Step, idk_reference, lora_l1
from clearbench.unlearn.registry import DECLARED

LOSSES = "losses.csv"
Encoder = Callable[[list[Sample]], dict]


@dataclass
class Track:
    forget: list[Sample]
    retain: list[Sample]
    encoder: Callable[..., Encoder]  # (tokenizer, model meta, model config, max_len) -> encoder
    lora: dict | None = None  # LoRA overrides (a VLM excludes its vision tower)
    check: Callable | None = None  # check(model) raises if a part that must stay frozen is not


def text_track(forget_path: str, retain_path: str) -> Track:
    def samples(path):
        df = read_qa(path)
        return [Sample(q, a) for q, a in zip(df["question"], df["answer"], strict=True)]

    def encoder(tok, meta, config, max_len):
        return lambda rows: collate(
            [encode(tok, s.question, s.answer, max_len) for s in rows], tok.pad_token_id
        )

    return Track(samples(forget_path), samples(retain_path), encoder)


def vlm_track(clear_dir: str, text_dir: str, split: str, modality: str, hp: dict) -> Track:
    """The split's forget authors and its retain authors, in one modality (text: their text QA;
    visual: their photo QA and identification; both)."""
    from clearbench.train.vlm import (
        check_tower_frozen,
        freeze_flag,
        frozen_tower_lora,
        modality_samples,
        training_table,
    )

    def encoder(tok, meta, config, max_len):
        vision = Vision(tok, load_image_processor(meta["base"], trusts_remote_code(meta)), config)
        return lambda rows: vision.batch(rows, max_len)

    forget = modality_samples(clear_dir, text_dir, split, modality, hp["seed"])
    retain = modality_samples(clear_dir, text_dir, training_table(split), modality, hp["seed"])
    check = check_tower_frozen if freeze_flag(hp) else None
    return Track(forget, retain, encoder, lora=frozen_tower_lora(hp), check=check)


def with_idk(samples: list[Sample], seed: int) -> list[Sample]:
    """Each forget question with its own seeded "I don't know" answer."""
    return [
        Sample(s.question, idk_answer(seed, f"{s.question}\n{s.answer}"), s.image) for s in samples
    ]


def paired_steps(n_forget: int, n_retain: int, batch_size: int, epochs: int, gen):
    """Epochs over the forget set; each forget batch is paired with a random retain batch."""
    for _ in range(epochs):
        for f in batches(list(range(n_forget)), batch_size, gen):
            yield f, torch.randint(n_retain, (len(f),), generator=gen).tolist()


def unlearn(
    original_dir: str, out_dir: str, hp: dict, track: Track, reference_dir: str | None = None
) -> dict:
    """One registered method (`hp["method"]`, its hyperparameters in `hp["method_hp"]`)."""
    name = hp["method"]
    if name in DECLARED and DECLARED[name].edit:
        from clearbench.unlearn.edit import unlink_adapter

        return unlink_adapter(original_dir, out_dir, hp, track)
    if name not in METHODS:
        raise ValueError(f"unlearn.methods: unknown method '{name}' (known: {', '.join(METHODS)})")
    method = METHODS[name]
    reference = None
    if method.reference:
        if not reference_dir:
            raise ValueError(f"{name} needs --reference, the model tuned on the IDK forget set")
        status = read_model_json(reference_dir).get("status", "ok")
        if status != "ok":  # nothing to compare against: a status row, not a crash
            meta = read_model_json(original_dir)
            out = fresh_dir(out_dir)
            save_chain(out, base=meta["base"], adapters=meta["adapters"], status=status,
                       rte_seconds=0.0, reason=f"its reference {reference_dir} is {status}",
                       trust_remote_code=trusts_remote_code(meta))  # fmt: skip
            return {"status": status}
        start = time.perf_counter()
        reference = reference_logps(reference_dir, track, hp)
        spent = time.perf_counter() - start  # part of the method's cost (RTE)
        return train_adapter(original_dir, out_dir, hp, track, method.objective, reference, spent)
    return train_adapter(original_dir, out_dir, hp, track, method.objective)


def train_reference(original_dir: str, out_dir: str, hp: dict, track: Track) -> dict:
    """DPO's reference: the original LoRA-tuned on the forget questions with IDK answers."""
    return train_adapter(original_dir, out_dir, hp | {"l1_lambda": 0.0}, track, idk_reference)


@torch.no_grad()
def reference_logps(reference_dir: str, track: Track, hp: dict) -> dict[str, torch.Tensor]:
    """log p_ref(y|x) of every forget sample's IDK (chosen) and true (rejected) answer. The
    reference is frozen and the forget set fixed, so these are computed once, before the model
    being trained is loaded: one copy of the base in memory at a time."""
    model, meta = load_model(reference_dir, compute=compute_hp(hp))
    tok = load_tokenizer(meta["base"], trusts_remote_code(meta))
    encoder = track.encoder(tok, meta, model.config, hp["max_len"])
    out = {}
    for key, samples in (("idk", with_idk(track.forget, hp["seed"])), ("forget", track.forget)):
        chunks = [
            samples[i : i + hp["batch_size"]] for i in range(0, len(samples), hp["batch_size"])
        ]
        out[key] = torch.cat([answer_outputs(model, encoder(c)).logp() for c in chunks])
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the reference's memory goes back before the original loads
    return out


def train_adapter(
    original_dir, out_dir, hp: dict, track: Track, objective, reference=None, spent: float = 0.0
):
    """Train a new LoRA adapter on the original with `objective`; `spent`: seconds already
    spent on this run (counted in its RTE)."""
    lora = hp["lora"] | (track.lora or {})
    out, model, tok, meta, gen = start_adapter_run(original_dir, out_dir, hp | {"lora": lora})
    if track.check:
        track.check(model)
    encode = track.encoder(tok, meta, model.config, hp["max_len"])
    encoder = lambda rows: to_device(encode(rows), model)  # noqa: E731
    forget, retain = track.forget, track.retain
    idk = with_idk(forget, hp["seed"])
    ctx = Context(model, hp.get("method_hp", {}), hp["seed"])
    l1 = hp.get("l1_lambda", 0.0)

    def step_loss(pair):
        f, r = pair
        step = Step(
            forget=encoder([forget[i] for i in f]),
            idk=encoder([idk[i] for i in f]),
            retain=encoder([retain[i] for i in r]),
            reference={k: v[f] for k, v in reference.items()} if reference else {},
        )
        terms = objective(ctx, step)
        if l1:
            terms["l1"] = l1 * lora_l1(model)
        return terms

    total = hp["epochs"] * -(-len(forget) // hp["batch_size"])
    start, status, losses, terms = time.perf_counter(), "ok", [], []
    try:
        losses = optimize(
            model,
            paired_steps(len(forget), len(retain), hp["batch_size"], hp["epochs"], gen),
            step_loss,
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            total=total,
            desc=f"{hp.get('method', 'idk reference')} {Path(out_dir).name}",
            terms=terms,
        )
    except Diverged:
        status = "diverged"
    write_losses(terms, out / LOSSES)  # kept for a diverged run too: it shows why
    seconds = spent + time.perf_counter() - start
    return finish_adapter_run(out, model, meta, status, seconds, losses)


def write_losses(terms: list[dict[str, float]], path: Path) -> None:
    df = pd.DataFrame(terms)
    df.insert(0, "loss", df.sum(axis=1) if len(df) else [])
    df.insert(0, "step", range(len(df)))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
