"""The one optimisation loop: AdamW, progress bar, and divergence as a status, not a crash."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm


class Diverged(RuntimeError):
    """The loss or a gradient became NaN or infinite; the caller records status `diverged`."""


def optimize(
    model: torch.nn.Module,
    steps: Iterable,
    step_loss: Callable[[object], torch.Tensor | dict[str, torch.Tensor]],
    lr: float,
    weight_decay: float,
    total: int | None = None,
    desc: str = "train",
    max_grad_norm: float | None = 1.0,
    warmup: float = 0.05,
    terms: list[dict[str, float]] | None = None,
) -> list[float]:
    """Run one optimizer step per item of `steps`; return the loss per step.

    `step_loss` returns the loss, or its terms by name: their sum is minimised and, with a
    `terms` list given, each step's terms are appended to it (the diverging step's included).
    With `total` known, the learning rate warms up linearly over the first `warmup` share of
    the steps and then decays linearly to zero (the HF Trainer default schedule).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = None
    if total:
        n_warm = max(1, int(warmup * total))
        ramp = lambda i: min((i + 1) / n_warm, max(0.0, (total - i) / max(1, total - n_warm)))  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, ramp)
    model.train()
    losses = []
    bar = tqdm(steps, total=total, desc=desc, mininterval=2.0, leave=False)
    for step in bar:
        out = step_loss(step)
        parts = out if isinstance(out, dict) else {"loss": out}
        loss = sum(parts.values())
        value = float(loss.detach())
        if terms is not None:
            terms.append({k: float(v.detach()) for k, v in parts.items()})
        if not math.isfinite(value):
            raise Diverged(f"{desc}: loss {value} at step {len(losses)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # a finite loss can still have a non-finite gradient; stepping on it writes NaN weights
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf)
        if not math.isfinite(float(norm)):
            raise Diverged(f"{desc}: gradient norm {float(norm)} at step {len(losses)}")
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(value)
        bar.set_postfix(loss=f"{value:.3f}", refresh=False)
    model.eval()
    return losses
