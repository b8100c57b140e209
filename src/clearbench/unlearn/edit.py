"""Training-free unlearning of a VLM: Unlink (clearbench.unlink) on its vision tower and
projector, from photos of the forget authors.

The edit W* = W - W U diag(eta) U^T of each chosen layer is a rank-k change, so it is stored as
what every other unlearned model is: one LoRA adapter on top of the original's chain (rank =
the largest k, alpha = rank so that peft's scaling is 1), recovered exactly from the weight
difference by an SVD. Evaluation then loads it like any trained method.
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image

from clearbench.compute import compute_hp
from clearbench.models.factory import (
    load_image_processor,
    load_model,
    save_chain,
    trusts_remote_code,
)
from clearbench.train.text import fresh_dir, save_adapter


def photos(samples, n: int, seed: int) -> list[bytes]:
    """n distinct photos of `samples` (seeded draw; every photo once)."""
    distinct = list(dict.fromkeys(s.image for s in samples if s.image is not None))
    if not distinct:
        raise ValueError("unlink needs photos: the forget set has none (modality 'text'?)")
    order = np.random.default_rng(seed).permutation(len(distinct))
    return [distinct[i] for i in order[:n]]


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rank, d_in...), B (out, rank)) with B @ A == delta (flattened) for a delta of rank
    <= rank; a conv delta gets peft's conv LoRA layout (A a kernel, B a 1x1 conv)."""
    flat = delta.reshape(delta.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(rank, s.numel())
    b = torch.zeros(flat.shape[0], rank, dtype=flat.dtype)
    a = torch.zeros(rank, flat.shape[1], dtype=flat.dtype)
    b[:, :k], a[:k] = u[:, :k] * s[:k], vh[:k]
    if delta.dim() == 4:
        return a.reshape(rank, *delta.shape[1:]).float(), b[:, :, None, None].float()
    return a.float(), b.float()


def save_as_adapter(model, before: dict[str, torch.Tensor], out, rank: int) -> str:
    """The weight changes of the modules in `before` (name -> weight before the edit) as one
    LoRA adapter in `out`."""
    from peft import LoraConfig, get_peft_model

    deltas = {n: model.get_submodule(n).weight.detach().cpu() - w for n, w in before.items()}
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(deltas))
    peft_model = get_peft_model(model, config)
    for name, delta in deltas.items():
        layer = peft_model.base_model.model.get_submodule(name)
        a, b = low_rank(delta, rank)
        layer.lora_A["default"].weight.data.copy_(a)
        layer.lora_B["default"].weight.data.copy_(b)
    return save_adapter(peft_model, out)


def unlink_adapter(original_dir: str, out_dir: str, hp: dict, track) -> dict:
    """Unlink on the original VLM (`hp["method_hp"]`: layers, n_samples, k or energy, variant,
    n_retain, ridge, max_rows, seed). RTE: feature collection and edit, not load and save."""
    from clearbench.unlink import resolve_layers, unlink

    out = fresh_dir(out_dir)
    mhp = hp["method_hp"]
    model, meta = load_model(original_dir, compute=compute_hp(hp))
    processor = load_image_processor(meta["base"], trusts_remote_code(meta))

    def pixels(samples, n):
        images = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos(samples, n, mhp["seed"])]
        px = processor(images=images, return_tensors="pt")["pixel_values"]
        return px.to(model.device, model.dtype)

    def run(px):
        return lambda: model.get_image_features(pixel_values=px)

    entangled = mhp["variant"] == "entangled"
    forget = pixels(track.forget, mhp["n_samples"])
    retain = pixels(track.retain, mhp["n_retain"]) if entangled else None
    names = resolve_layers(model, mhp["layers"])
    before = {n: model.get_submodule(n).weight.detach().cpu().clone() for n in names}
    start = time.perf_counter()
    report = unlink(
        model, mhp["layers"], run(forget), run(retain) if entangled else None,
        k=None if "energy" in mhp else mhp["k"], energy=mhp.get("energy"),
        variant=mhp["variant"], ridge=mhp["ridge"], max_rows=mhp["max_rows"], seed=mhp["seed"],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    finite = all(torch.isfinite(model.get_submodule(n).weight).all() for n in names)
    status = "ok" if finite else "diverged"
    adapters = list(meta["adapters"])
    if finite:
        rank = max(r["k"] for r in report.values())
        adapters.append(save_as_adapter(model, before, out, rank))
    save_chain(out, base=meta["base"], adapters=adapters, status=status, rte_seconds=seconds,
               layers=report, trust_remote_code=trusts_remote_code(meta))  # fmt: skip
    return {"status": status, "rte_seconds": seconds, "layers": report}
