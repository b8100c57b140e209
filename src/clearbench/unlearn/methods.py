"""Unlearning objectives of the language tracks (text and vlm): method name -> loss terms.

An objective sees one `Step` (a forget batch, the same forget questions answered "I don't know",
a retain batch, each encoded by its track with or without images) and a `Context` (the model,
the frozen original, the method's hyperparameters). It never learns which track it runs on. It
returns its loss terms by name; their sum is minimised and each is logged per step.

Formulas: CLEAR Appendix A. Conventions where the paper leaves a choice:
- NLL terms are the mean NLL of the answer tokens per sample, then the batch mean.
- KL terms compare next-token distributions at the answer positions, averaged per sample.
- Preference terms (DPO, NPO) use sequence log-likelihoods log p(y|x), the sum over the
  answer's tokens, as the DPO and NPO papers do (not per-token ratios); SimNPO divides by |y|.
- RMU's distances are mean squared errors over the hidden size (as the RMU authors' code; the
  paper's squared norm divided by a constant), over every attended position of the input.
- The frozen original is the same model with the unlearning adapter disabled, without
  gradient: no second copy of the base.

Adding a method: its entry in registry.py (hyperparameter types and ranges, read by the
workflow without torch), its objective here (`@register(name)`), its section in params.yaml
`unlearn.method_hp`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clearbench.hparams import Param
from clearbench.train.qa import Answers, answer_outputs
from clearbench.unlearn.registry import DECLARED


@dataclass
class Step:
    forget: dict  # encoded batch: forget questions with their true answers
    idk: dict  # the same questions, each with its "I don't know" answer
    retain: dict  # an equally sized random retain batch
    reference: dict = field(default_factory=dict)  # DPO: the reference's log p of idk / forget


@dataclass
class Context:
    model: torch.nn.Module  # peft model: the merged original plus the adapter being trained
    hp: dict  # this method's hyperparameters (unlearn.method_hp.<method>)
    seed: int = 0

    def answers(self, batch: dict, hidden_states: bool = False) -> Answers:
        return answer_outputs(self.model, batch, hidden_states)

    def original(self, batch: dict, hidden_states: bool = False) -> Answers:
        with self.frozen_original():
            return answer_outputs(self.model, batch, hidden_states)

    @contextmanager
    def frozen_original(self):
        with self.model.disable_adapter(), torch.no_grad():
            yield


Objective = Callable[[Context, Step], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Method:
    objective: Objective
    hp: dict[str, Param]  # hyperparameter name -> type and range, checked before any job
    reference: bool = False  # needs the DPO reference model (tuned on the IDK forget set)


METHODS: dict[str, Method] = {}


def register(name: str):
    """The objective of `name`, with its declaration from registry.py."""
    if name not in DECLARED:
        raise KeyError(f"unlearning method {name!r}: declare it in clearbench/unlearn/registry.py")

    def add(fn: Objective) -> Objective:
        METHODS[name] = Method(fn, DECLARED[name].hp, DECLARED[name].reference)
        return fn

    return add


def token_kl(p: Answers, q: Answers) -> torch.Tensor:
    """KL(P || Q) of the next-token distributions, averaged over each sample's answer (B,)."""
    log_p, log_q = F.log_softmax(p.logits, -1), F.log_softmax(q.logits, -1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    return p.per_sequence(per_token) / p.counts


def attended_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the hidden size and the attended positions of each sample, then over samples."""
    per_position = ((hidden.float() - target.float()) ** 2).mean(-1)
    return ((per_position * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


@register("retain_ft")
def retain_finetune(ctx: Context, step: Step):
    """Finetune on retain only and hope the forget set fades."""
    return {"retain": ctx.answers(step.retain).nll().mean()}


@register("ga")
def gradient_ascent(ctx: Context, step: Step):
    """Maximise the NLL of the forget answers."""
    return {"forget": -ctx.answers(step.forget).nll().mean()}


@register("gd")
def gradient_difference(ctx: Context, step: Step):
    """Ascend on forget, descend on retain (Liu et al., 2022)."""
    return {
        "forget": -ctx.answers(step.forget).nll().mean(),
        "retain": ctx.answers(step.retain).nll().mean(),
    }


@register("kl")
def kl_minimisation(ctx: Context, step: Step):
    """Ascend on forget; forward KL(current || original) on retain (Golatkar et al., 2020)."""
    retain = ctx.answers(step.retain)
    return {
        "forget": -ctx.answers(step.forget).nll().mean(),
        "kl_retain": token_kl(retain, ctx.original(step.retain)).mean(),
    }


@register("idk")
def idk_tuning(ctx: Context, step: Step):
    """Answer the forget questions with "I don't know"; descend on retain (Maini et al., 2024)."""
    return {
        "idk": ctx.answers(step.idk).nll().mean(),
        "retain": ctx.answers(step.retain).nll().mean(),
    }


@register("dpo")
def preference_optimisation(ctx: Context, step: Step):
    """lambda1 NLL(idk) + lambda2 DPO with chosen = the IDK answer, rejected = the true answer,
    against a reference tuned on the IDK forget set."""
    hp = ctx.hp
    chosen, rejected = ctx.answers(step.idk), ctx.answers(step.forget)
    margin = (chosen.logp() - step.reference["idk"]) - (rejected.logp() - step.reference["forget"])
    return {
        "idk": hp["lambda1"] * chosen.nll().mean(),
        "dpo": hp["lambda2"] * -F.logsigmoid(hp["beta"] * margin).mean(),
    }


@register("npo")
def negative_preference_optimisation(ctx: Context, step: Step):
    """(2/beta) log(1 + (p(y|x) / p_orig(y|x))^beta) on forget (Zhang et al., 2024)."""
    beta = ctx.hp["beta"]
    ratio = ctx.answers(step.forget).logp() - ctx.original(step.forget).logp()
    return {"forget": -(2 / beta) * F.logsigmoid(-beta * ratio).mean()}


@register("simnpo")
def simple_npo(ctx: Context, step: Step):
    """Reference-free NPO on the length-normalised likelihood, plus retain NLL (Fan et al., 2024):
    -(2/beta) log sigmoid(beta (NLL(y|x)/|y| - delta))."""
    hp = ctx.hp
    margin = ctx.answers(step.forget).nll() - hp["delta"]
    return {
        "forget": hp["forget_weight"]
        * -(2 / hp["beta"])
        * F.logsigmoid(hp["beta"] * margin).mean(),
        "retain": hp["retain_weight"] * ctx.answers(step.retain).nll().mean(),
    }


@register("scrub")
def scrub(ctx: Context, step: Step):
    """Student (trained) disobeys teacher (original) on forget, obeys on retain (Kurmanji et
    al., 2023), with d = KL(teacher || student): alpha d_R - d_F + gamma NLL_R, one loss."""
    hp = ctx.hp
    retain, forget = ctx.answers(step.retain), ctx.answers(step.forget)
    return {
        "kl_retain": hp["alpha"] * token_kl(ctx.original(step.retain), retain).mean(),
        "kl_forget": -token_kl(ctx.original(step.forget), forget).mean(),
        "retain": hp["gamma"] * retain.nll().mean(),
    }


@register("llmu")
def llmu(ctx: Context, step: Step):
    """Forget ascent + "I don't know" answers + forward KL(current || original) on retain
    (Yao et al., 2024, with CLEAR's IDK labels in place of random ones)."""
    hp = ctx.hp
    retain = ctx.answers(step.retain)
    return {
        "forget": hp["forget_weight"] * -ctx.answers(step.forget).nll().mean(),
        "idk": hp["idk_weight"] * ctx.answers(step.idk).nll().mean(),
        "kl_retain": hp["retain_weight"] * token_kl(retain, ctx.original(step.retain)).mean(),
    }


def rmu_direction(seed: int, size: int, device) -> torch.Tensor:
    """RMU's fixed unit vector: elements uniform in [0, 1), normalised; seeded."""
    u = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    return (u / u.norm()).to(device)


@register("rmu")
def rmu(ctx: Context, step: Step):
    """Hidden states of `layer` steered to c*u on forget, kept at the original's on retain
    (Li et al., 2024)."""
    hp = ctx.hp
    layer = hp["layer"]
    states = ctx.answers(step.forget, hidden_states=True).hidden_states
    if not 1 <= layer < len(states):
        raise ValueError(f"rmu.layer: {layer}, but the model has layers 1..{len(states) - 1}")
    forget = states[layer]
    retain = ctx.answers(step.retain, hidden_states=True).hidden_states[layer]
    kept = ctx.original(step.retain, hidden_states=True).hidden_states[layer]
    target = hp["c"] * rmu_direction(hp["seed"], forget.shape[-1], forget.device)
    return {
        "forget": attended_mse(forget, target.expand_as(forget), step.forget["attention_mask"]),
        "retain": hp["alpha"] * attended_mse(retain, kept, step.retain["attention_mask"]),
    }


def idk_reference(ctx: Context, step: Step):
    """Not a method: how DPO's reference is made, the original tuned on the IDK forget set."""
    return {"idk": ctx.answers(step.idk).nll().mean()}


def lora_l1(model: torch.nn.Module) -> torch.Tensor:
    """The l1 norm of the LoRA weights: CLEAR's proxy for how far unlearning moved the model."""
    return sum(
        p.abs().sum() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad
    )
