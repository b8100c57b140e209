"""Unlearning objectives for the language tracks: method name -> loss on one step.

Each objective sees a forget batch and an equally sized retain batch (CLEAR Appendix A)
and returns the loss to *minimise*. Adding a method is one function here plus its name in
params.yaml `unlearn.methods`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from clearbench.train.qa import collate, encode, sequence_nll


@dataclass
class Context:
    model: torch.nn.Module
    tok: object
    max_len: int
    hp: dict = field(default_factory=dict)

    def nll(self, rows) -> torch.Tensor:
        batch = collate(
            [encode(self.tok, q, a, self.max_len) for q, a in rows], self.tok.pad_token_id
        )
        return sequence_nll(self.model, batch).mean()


Objective = Callable[[Context, list, list], torch.Tensor]
METHODS: dict[str, Objective] = {}


def register(name: str):
    def add(fn: Objective) -> Objective:
        METHODS[name] = fn
        return fn

    return add


@register("retain_ft")
def retain_finetune(ctx: Context, forget, retain):
    """Finetune on retain only and hope the forget set fades."""
    return ctx.nll(retain)


@register("ga")
def gradient_ascent(ctx: Context, forget, retain):
    """Maximise the NLL of the forget answers."""
    return -ctx.nll(forget)


@register("gd")
def gradient_difference(ctx: Context, forget, retain):
    """Ascend on forget, descend on retain (Liu et al., 2022)."""
    return -ctx.nll(forget) + ctx.nll(retain)


def lora_l1(model: torch.nn.Module) -> torch.Tensor:
    """The l1 norm of the LoRA weights: CLEAR's proxy for how far unlearning moved the model."""
    return sum(
        p.abs().sum() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad
    )
