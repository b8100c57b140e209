"""Unlearning methods of the vision track: name -> per-model loss of one step.

Every method is a function `fn(step, **hp)` that returns the loss to *minimise* with one value
per model, shape (M,) (CLEAR Appendix A; hyperparameter defaults from the paper where it gives
them). All tensors carry a leading model dim: under the vectorized ensemble M is the chunk
size, under the loop trainer M = 1, and the same code serves both, because a method only sees
model outputs (embeddings, cosines to the class weights, stage features) and never a module.
Gradient orthogonalisation returns a pair (forget loss, retain loss) instead; the trainer then
ascends the forget loss along the part of its gradient orthogonal to the retain gradient.

`step` (class Step) holds the forget batch (xf, yf) and the retain batch (xr, yr) of each model,
lazily computed student outputs (train mode) and teacher outputs (the original model, frozen,
eval mode), and per-model random generators. Adding a method: its entry in registry.py (names and
hyperparameter ranges, read by the workflow without torch), one function here, its name in
params (vision.methods).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from clearbench.vision.model import identity_loss, masked
from clearbench.vision.registry import HP

METHODS: dict = {}  # name -> loss function; names and hyperparameters: registry.py


def register(name):
    if name not in HP:
        raise KeyError(f"vision method {name!r}: declare it in clearbench/vision/registry.py")

    def add(fn):
        METHODS[name] = fn
        return fn

    return add


class Step:
    """One unlearning step for M models (see module docstring)."""

    def __init__(
        self, student, teacher, xf, yf, xr, yr, class_mask, retain_mask, gens, params, loss_hp=None
    ):
        self.student_fn, self.teacher_fn = student, teacher
        self.xf, self.yf, self.xr, self.yr = xf, yf, xr, yr
        self.class_mask = class_mask  # (M, C) identities the original model trained on
        self.retain_mask = retain_mask  # (M, C) of which those it keeps
        self.gens = gens  # one torch.Generator per model: augmentations, random labels
        self.params = params  # stacked trainable tensors (for weight penalties)
        self.loss_hp = dict(loss_hp or {})

    # Student outputs are computed once per step: each train-mode forward also updates the
    # batch-norm running stats, so a second call would count the batch twice.
    @cached_property
    def sf(self):
        return self.student_fn(self.xf)

    @cached_property
    def sr(self):
        return self.student_fn(self.xr)

    @cached_property
    def tf(self):
        return self.teacher_fn(self.xf)

    @cached_property
    def tr(self):
        return self.teacher_fn(self.xr)

    def ce(self, out, y):
        """The training objective (margin softmax over the model's classes), per model."""
        return identity_loss(out[1], y, self.class_mask, **self.loss_hp)

    def log_probs(self, out, temperature=1.0):
        """Output distribution of a biometric model: softmax of s*cos over its classes."""
        s = self.loss_hp.get("s", 16.0)
        return F.log_softmax(masked(s * out[1] / temperature, self.class_mask), -1)

    def random_labels(self, n):
        """Per model, n identities drawn uniformly from its retain identities."""
        if not self.retain_mask.any(1).all():
            raise ValueError("a model has no retain identity to draw replacement labels from")
        w = self.retain_mask.float().cpu()  # the generators are CPU generators
        rows = [
            torch.multinomial(w[k], n, replacement=True, generator=g)
            for k, g in enumerate(self.gens)
        ]
        return torch.stack(rows).to(self.yf.device)


def kl(log_p, log_q):
    """KL(p || q) per model, averaged over the batch: log_p, log_q (M, B, C) -> (M,)."""
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean(-1)


def cosine(a, b):
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def l1(params, m):
    return sum(p.abs().reshape(m, -1).sum(1) for p in params.values())


def augment(x, gens, shift=3, noise=0.3, jitter=0.3):
    """Per model, per image: random flip, translation (edge-replicated), brightness/contrast
    jitter and Gaussian noise, in normalised pixel units; drawn from the model's generator."""
    m, b, c, h, w = x.shape
    dev = x.device  # draws come from CPU generators (same numbers on any device), then move
    rnd = lambda *shape: torch.stack([torch.rand(*shape, generator=g) for g in gens]).to(dev)  # noqa: E731
    flip = rnd(b) < 0.5
    x = torch.where(flip.view(m, b, 1, 1, 1), x.flip(-1), x)
    off = (rnd(b, 2) * (2 * shift + 1)).long().reshape(m * b, 2)  # 0 .. 2*shift
    pad = F.pad(x.reshape(m * b, c, h, w), (shift,) * 4, mode="replicate")
    rows = (off[:, 0, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (off[:, 1, None] + torch.arange(w, device=dev))[:, None, :]
    x = pad[torch.arange(m * b, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    x = x.reshape(m, b, c, h, w)
    u = rnd(b, 2)
    contrast = 1 + jitter * (2 * u[..., 0] - 1)
    brightness = jitter * (2 * u[..., 1] - 1)
    x = x * contrast.view(m, b, 1, 1, 1) + brightness.view(m, b, 1, 1, 1)
    eps = torch.stack([torch.randn(b, c, h, w, generator=g) for g in gens])
    return x + noise * eps.to(dev, x.dtype)


# --------------------------------------------------------------------------- methods


@register("retain_ft")
def retain_ft(step):
    """Finetune on retain only (App. A.1)."""
    return step.ce(step.sr, step.yr)


@register("neggrad")
def neggrad(step, forget_weight=1.0):
    """Gradient ascent on forget with descent on retain (App. A.3, gradient difference)."""
    return -forget_weight * step.ce(step.sf, step.yf) + step.ce(step.sr, step.yr)


@register("scrub")
def scrub(step, alpha=1.0, gamma=1.0, temperature=1.0):
    """SCRUB (App. A.8): L = alpha KL_R - KL_F + gamma CE_R, KL(teacher || student)."""
    lp = lambda out: step.log_probs(out, temperature)  # noqa: E731
    kl_r = kl(lp(step.tr), lp(step.sr))
    kl_f = kl(lp(step.tf), lp(step.sf))
    return alpha * kl_r - kl_f + gamma * step.ce(step.sr, step.yr)


@register("scrub_bio")
def scrub_bio(step):
    """SCRUB_bio (App. A.12): embeddings instead of class distributions, cosine distance.
    L_F = mean(1 - d_cos(f, f_o)) = mean cos(f, f_o) pushes forget embeddings away from the
    original's; L_R = mean d_cos keeps retain embeddings where they were."""
    l_f = cosine(step.sf[0], step.tf[0]).mean(-1)
    l_r = (1 - cosine(step.sr[0], step.tr[0])).mean(-1)
    return l_f + l_r


@register("twins")
def twins(step, shift=3, noise=0.3, jitter=0.3, distance="l2"):
    """Twins (App. A.11): match the original's output on *augmented* forget images (a proxy for
    an unseen image of the same person: the models are trained without augmentation), and
    the original's output on retain images. d = squared L2 of embeddings, or KL of outputs."""
    with torch.no_grad():
        t_aug = step.teacher_fn(augment(step.xf, step.gens, shift, noise, jitter))
    if distance == "kl":
        return kl(step.log_probs(t_aug), step.log_probs(step.sf)) + kl(
            step.log_probs(step.tr), step.log_probs(step.sr)
        )
    l_f = (step.sf[0] - t_aug[0]).pow(2).sum(-1).mean(-1)
    l_r = (step.sr[0] - step.tr[0]).pow(2).sum(-1).mean(-1)
    return l_f + l_r


@register("sparsity")
def sparsity(step, l1_lambda=5e-4):
    """Retain finetuning with an L1 penalty on all weights (App. A.13, Jia et al. 2024)."""
    return step.ce(step.sr, step.yr) + l1_lambda * l1(step.params, step.xr.shape[0])


@register("llmu")
def llmu(step, random_weight=1.0, retain_weight=1.0):
    """LLMU (App. A.9): ascent on forget + CE towards random retain identities on forget images
    (the original method's random labels; there is no "I don't know" identity) + forward
    KL(student || original) on retain."""
    y_rand = step.random_labels(step.yf.shape[1])
    return (
        -step.ce(step.sf, step.yf)
        + random_weight * step.ce(step.sf, y_rand)
        + retain_weight * kl(step.log_probs(step.sr), step.log_probs(step.tr))
    )


@register("rmu")
def rmu(step, layer=3, c=6.5, alpha=1.0, seed=0):
    """RMU (App. A.10): steer the stage-`layer` features of forget images (per spatial position,
    the image analogue of per-token) to c*u, u a fixed random unit vector with U[0, 1] entries;
    keep retain features at the original's. c = 6.5 as in Li et al. 2024."""
    h_f, h_r, h_o = step.sf[2][layer], step.sr[2][layer], step.tr[2][layer]
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(h_f.shape[2], generator=g, dtype=h_f.dtype).to(h_f.device)
    u = (c * u / u.norm()).view(1, 1, -1, 1, 1)
    l_f = (h_f - u).pow(2).sum(2).mean((-1, -2, -3))
    l_r = (h_r - h_o).pow(2).sum(2).mean((-1, -2, -3))
    return l_f + alpha * l_r


@register("dpo")
def dpo(step, beta=0.1, lambda1=1.0, lambda2=1.0):
    """DPO adapted (App. A.6): on forget images prefer a random retain identity y_w over the
    true identity y_l; reference = the original model (the paper's reference is tuned on "I
    don't know" answers, which an identity classifier has no analogue of). beta 0.1,
    lambda1 = lambda2 = 1. L = lambda1 CE(y_w) + lambda2 L_DPO."""
    y_w, y_l = step.random_labels(step.yf.shape[1]), step.yf
    pick = lambda lp, y: lp.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    lp, lp_ref = step.log_probs(step.sf), step.log_probs(step.tf)
    margin = (pick(lp, y_w) - pick(lp_ref, y_w)) - (pick(lp, y_l) - pick(lp_ref, y_l))
    l_dpo = -F.logsigmoid(beta * margin).mean(-1)
    return lambda1 * step.ce(step.sf, y_w) + lambda2 * l_dpo


@register("grad_orth")
def grad_orth(step):
    """Gradient orthogonalisation (App. A.14): ascend the forget loss along the component of
    its gradient orthogonal to the retain gradient. Returns (L_F, L_R); the trainer projects
    per model (we divide by |grad L_R|^2, a true projection; the paper prints |grad L_R|)."""
    return step.ce(step.sf, step.yf), step.ce(step.sr, step.yr)


# ------------------------------------------------------------------------------ task


class UnlearnTask:
    """`run_steps` task: model k unlearns its forget pool with batches from its retain pool.

    forget_plan / retain_plan (M, steps, B) sample indices; class_mask / retain_mask (M, C);
    teacher: the original models' State (same rows); seeds (M,) per-model random streams.
    """

    def __init__(
        self,
        method,
        pixels,
        labels,
        forget_plan,
        retain_plan,
        class_mask,
        retain_mask,
        teacher,
        seeds,
        method_hp=None,
        loss_hp=None,
    ):
        if method not in METHODS:
            raise ValueError(
                f"unknown vision unlearning method '{method}'; known: {sorted(METHODS)}"
            )
        self.fn, self.method_hp = METHODS[method], dict(method_hp or {})
        self.pixels, self.labels = pixels, torch.as_tensor(labels)
        self.fplan, self.rplan = torch.as_tensor(forget_plan), torch.as_tensor(retain_plan)
        self.class_mask = torch.as_tensor(class_mask)
        self.retain_mask = torch.as_tensor(retain_mask)
        self.teacher, self.seeds, self.loss_hp = teacher, np.asarray(seeds), loss_hp
        self.n_steps = forget_plan.shape[1]
        self._teacher_rows = None

    def loss(self, t, rows, student, ctx):
        key = tuple(int(r) for r in rows)
        if self._teacher_rows != key:  # slice the teacher once per chunk
            self._teacher_rows = key
            self._teacher = self.teacher.take(rows).to(ctx["device"])
        tp, tb = self._teacher.params, self._teacher.buffers

        def teacher(x):
            with torch.no_grad():
                return ctx["fwd"](tp, tb, x, False)

        fi, ri, dev = self.fplan[rows, t], self.rplan[rows, t], ctx["device"]
        gens = [torch.Generator().manual_seed(int(self.seeds[r]) * 1_000_003 + t) for r in rows]
        step = Step(
            student,
            teacher,
            self.pixels[fi].to(dev),
            self.labels[fi].to(dev),
            self.pixels[ri].to(dev),
            self.labels[ri].to(dev),
            self.class_mask[rows].to(dev),
            self.retain_mask[rows].to(dev),
            gens,
            ctx["params"],
            self.loss_hp,
        )
        return self.fn(step, **self.method_hp)
