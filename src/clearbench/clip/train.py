"""Contrastive training of the clip track's original and gold models, and zero-shot evaluation.

Loss: CLIP's symmetric InfoNCE with its learnable temperature (logit_scale, clamped at 100 as
in CLIP). Captions are "a photo of {name}", so two photos of one identity in a batch would have
identical captions and make the InfoNCE targets ambiguous (the other photo's caption is a
"negative" that is exactly the positive). We therefore sample batches with at most one photo
per identity: each epoch, round r takes the r-th photo (seeded order) of every identity that
has one, and each round is cut into batches. The loss is then exactly CLIP's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clearbench.clip import model as cm
from clearbench.clip.data import GROUPS, ClipData

MAX_LOGIT_SCALE = math.log(100.0)

DEFAULT_HP = dict(
    seed=0,
    image_size=32,  # photos are resized to this square size (Lanczos)
    eval_fraction=0.3,  # per identity, held-out photos for zero-shot evaluation
    template="a photo of {name}",
    vocab_size=512,  # tiny model: BPE trained on the prompts
    model=dict(config=cm.TINY_CLIP_CONFIG),  # or checkpoint: openai/clip-vit-base-patch32
    train=dict(epochs=60, batch_size=64, lr=2e-3, weight_decay=0.1, augment=True),
    device="cpu",  # cpu | cuda | auto (cuda when visible)
    method_hp={},  # per unlearning method: {name: {kwarg: value}}
)


def identity_batches(labels: np.ndarray, batch_size: int, rng) -> list[np.ndarray]:
    """One epoch of index batches over `labels`, never two of one identity in a batch."""
    by_id = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    batches = []
    for r in range(max(len(ix) for ix in by_id)):
        idx = rng.permutation(np.array([ix[r] for ix in by_id if len(ix) > r]))
        batches += np.array_split(idx, math.ceil(len(idx) / batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def augment(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 1/8 of the side (edge-padded): identity
    survives both, and 14 photos per author are few for a ViT trained from scratch."""
    b, _, s, _ = pixels.shape
    flip = (torch.rand(b, generator=gen) < 0.5).to(pixels.device)  # draws on the CPU: seeded
    pixels = torch.where(flip.view(b, 1, 1, 1), pixels.flip(-1), pixels)
    pad = max(1, s // 8)
    padded = F.pad(pixels, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])


def clip_loss(model, pixel_values, text_inputs) -> torch.Tensor:
    img = cm.image_embeddings(model, pixel_values)
    txt = cm.text_embeddings(model, text_inputs)
    logits = model.logit_scale.exp() * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_clip(model, tok, data: ClipData, hp: dict, gold: bool = False) -> dict:
    """Train `model` in place on the train photos (without the target identities' if gold).
    Returns {"steps", "final_loss", "status"}; a non-finite loss stops training (diverged)."""
    t = hp["train"]
    keep = data.train.copy()
    if gold:
        keep &= ~np.isin(data.labels, data.labels_in("target"))
    idx = np.flatnonzero(keep)
    pixels = cm.to_pixels(data.pixels[idx], model)
    labels = data.labels[idx]
    text = cm.encode_text(model, tok, cm.prompts(data.names, hp["template"]))
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    rng = np.random.default_rng([hp["seed"], int(gold), 1])
    gen = torch.Generator().manual_seed(hp["seed"] * 2 + int(gold))
    epochs = [identity_batches(labels, t["batch_size"], rng) for _ in range(t["epochs"])]
    n_steps = sum(len(e) for e in epochs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, t["lr"], total_steps=max(n_steps, 1))
    model.train()
    step, loss_value, status = 0, float("nan"), "ok"
    bar = tqdm(total=n_steps, desc="clip " + ("gold" if gold else "original"), mininterval=2)
    for batches in epochs:
        for b in batches:
            x = pixels[b]
            if t.get("augment", True):
                x = augment(x, gen)
            ids = torch.as_tensor(labels[b], device=x.device)
            batch_text = {k: v[ids] for k, v in text.items()}
            loss = clip_loss(model, x, batch_text)
            if not torch.isfinite(loss):
                status = "diverged"
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step, loss_value = step + 1, loss.item()
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        if status != "ok":
            break
    bar.close()
    model.eval()
    if status == "ok" and not cm.is_finite(model):
        status = "diverged"
    return {"steps": step, "final_loss": loss_value, "status": status}


@torch.no_grad()
def evaluate(model, tok, data: ClipData, template: str = "a photo of {name}", chunk: int = 256):
    """Zero-shot identification of every eval photo over all names: one row per photo."""
    model.eval()
    text = cm.text_embeddings(model, cm.encode_text(model, tok, cm.prompts(data.names, template)))
    idx = np.flatnonzero(~data.train)
    probs = []
    for start in range(0, len(idx), chunk):
        part = idx[start : start + chunk]
        logits = cm.zero_shot_logits(model, cm.to_pixels(data.pixels[part], model), text)
        probs.append(logits.float().softmax(-1).cpu())
    probs = torch.cat(probs).numpy() if probs else np.zeros((0, data.n_identities))
    labels = data.labels[idx]
    pred = probs.argmax(-1) if len(idx) else np.zeros(0, dtype=int)
    return pd.DataFrame(
        {
            "sample_id": data.sample_ids[idx],
            "identity": [data.names[c] for c in labels],
            "group": [data.groups[c] for c in labels],
            "label": labels,
            "pred": pred,
            "correct": pred == labels,
            "p_true": probs[np.arange(len(idx)), labels] if len(idx) else np.zeros(0),
        }
    )


def summary(df: pd.DataFrame) -> dict:
    """{target_acc, other_acc, real_faces_acc} as fractions (None for an empty group)."""
    out = {}
    for g in GROUPS:
        rows = df[df["group"] == g]
        out[f"{g}_acc"] = float(rows["correct"].mean()) if len(rows) else None
    return out
