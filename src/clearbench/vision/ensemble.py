"""Train M biometric models at once: one stacked set of weights, one vmapped forward.

The membership protocol needs many models (paper: 128) that differ only in their data, their
classifier init and their data order. Looping over them pays Python and kernel-launch overhead
M times per layer; here every model's weights are stacked along a leading model dim
(torch.func.stack_module_state), the forward is `vmap(functional_call)` over that dim (convs
become one grouped conv), and the M losses are summed and backpropagated once. The losses are
separable, so d(sum)/d(theta_k) = d(loss_k)/d(theta_k): each model gets exactly its own
gradient, and SGD (momentum, weight decay) is elementwise, so one optimizer over the stacked
tensors steps every model exactly as its own optimizer would.

Batch norm. transformers' ResNet uses BatchNorm2d, which in training mode normalises with the
batch statistics and updates running_mean / running_var in place. We pass the running stats as
*stacked buffers* (one slice per model) through functional_call: under vmap the batch
statistics are computed per model over that model's own batch (vmap never mixes models), and
the in-place update writes each model's slice of the stacked buffer, since buffer and input
are batched along the same model dim (the in-place failure people hit with vmap comes from an
*unbatched* shared buffer). Evaluation uses eval mode, i.e. each model's own running stats, so
an image's embedding never depends on which other images share its batch. This is plain
BatchNorm semantics, per model, in both modes; the loop trainer below runs the same code
without vmap and gives the same weights and the same running stats (tests/test_vision.py).

Divergence: a model whose loss or gradient is not finite is marked dead (status "diverged"),
its gradient is zeroed from then on, and training goes on for the others; never a crash.

Speed (compare_ensemble_vs_loop, CLEAR default data, 32 px, TINY_CONFIG, 16 models, same plan,
a shared 2-core CPU): loop / vectorized = 1.6x at batch 64 and 2.1-2.3x at batch 16-32 with
one thread; 2.4x at batch 64, 4.7x at 32 and 5.4x at 16 with two threads on a quiet machine.
On CPU a batch-64 step is mostly convolution FLOPs, and oneDNN runs the grouped conv at about
the FLOP rate of M separate convs, so vectorizing removes the per-op dispatch overhead (~300
ops per model step incl. the optimizer) and lets two threads work on big ops; it cannot make
the arithmetic cheaper. The smaller the per-model work, the larger the gain (and on a GPU,
where the loop leaves the device idle, far larger).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.utils._pytree import tree_map
from transformers import ResNetConfig, ResNetModel

from clearbench.io import atomic_path
from clearbench.vision.model import (
    IdentityModel,
    config_of,
    identity_loss,
    load_tensors,
    template,
)

PER_MODEL = ("status", "alive")  # meta entries with one value per model


@dataclass
class State:
    """M models of one architecture: stacked params and buffers, leading dim = model."""

    params: dict
    buffers: dict
    config: dict  # model.config_of: rebuilds the architecture
    model_ids: list  # global model index of each slice
    meta: dict = field(default_factory=dict)  # status per model, rte_seconds, kind, ...

    @property
    def n(self):
        return len(self.model_ids)

    def take(self, rows):
        rows = list(rows)
        pick = lambda d: {k: v[rows].clone() for k, v in d.items()}  # noqa: E731
        meta = {k: [v[r] for r in rows] if k in PER_MODEL else v for k, v in self.meta.items()}
        ids = [self.model_ids[r] for r in rows]
        return State(pick(self.params), pick(self.buffers), self.config, ids, meta)

    def to(self, device):
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return State(move(self.params), move(self.buffers), self.config, self.model_ids, self.meta)

    def save(self, path):
        with atomic_path(path) as tmp:
            torch.save(self.__dict__, tmp)

    @classmethod
    def load(cls, path):
        return cls(**load_tensors(path))  # tensors, dicts, lists, numbers


def stack(models, model_ids=None, meta=None) -> State:
    params, buffers = stack_module_state(list(models))
    params = {k: v.detach().clone() for k, v in params.items()}
    ids = list(range(len(models))) if model_ids is None else list(model_ids)
    return State(params, buffers, config_of(models[0]), ids, meta or {})


def cat(states) -> State:
    first = states[0]
    params = {k: torch.cat([s.params[k] for s in states]) for k in first.params}
    buffers = {k: torch.cat([s.buffers[k] for s in states]) for k in first.buffers}
    ids = [i for s in states for i in s.model_ids]
    meta = dict(first.meta)
    for k in PER_MODEL:
        if all(k in s.meta for s in states):
            meta[k] = [v for s in states for v in s.meta[k]]
    return State(params, buffers, first.config, ids, meta)


def unstack(state: State, row: int):
    """One ordinary nn.Module (real tensors) from slice `row`."""
    cfg = state.config
    model = IdentityModel(
        ResNetModel(ResNetConfig(**cfg["backbone"])), cfg["embedding_dim"], cfg["num_classes"]
    )
    sd = {k: v[row] for k, v in {**state.params, **state.buffers}.items()}
    model.load_state_dict(sd)
    return model


# ------------------------------------------------------------------------------ forward


def make_forward(shell, vectorized: bool):
    """fwd(params, buffers, x, train) -> (emb, cos, hidden) with a leading model dim.

    Vectorized: vmap over the model dim of params, buffers and x ((M, B, ...); a 4-d x is
    shared by all models). Loop (M == 1): the same functional_call on slice 0, no vmap.
    """

    def one(p, b, x):
        return functional_call(shell, (p, b), (x,))

    def fwd(params, buffers, x, train):
        shell.train(train)
        if vectorized:
            if x.dim() == 4:  # the same images for every model
                return vmap(one, in_dims=(0, 0, None))(params, buffers, x)
            # Layout hint, same values: stored as (B, H, W, M, C), the (M, B, C, H, W) input
            # is what vmap's grouped conv sees as a channels-last (B, M*C, H, W) tensor,
            # which oneDNN runs ~1.3x faster than NCHW and without reorders.
            x = x.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)
            return vmap(one)(params, buffers, x)
        first = lambda d: {k: v[0] for k, v in d.items()}  # noqa: E731  views: BN updates land in place
        out = one(first(params), first(buffers), x[0] if x.dim() == 5 else x)
        return tree_map(lambda t: t.unsqueeze(0), out)

    return fwd


def embed(state: State, pixels, chunk=16, batch=256, vectorized=True, device="cpu"):
    """Eval-mode unit embeddings of every image by every model: (M, N, D), on the CPU."""
    shell = template(state.config)
    fwd = make_forward(shell, vectorized)
    out = []
    step = chunk if vectorized else 1
    with torch.no_grad():
        for a in range(0, state.n, step):
            s = state.take(range(a, min(a + step, state.n))).to(device)
            parts = [
                fwd(s.params, s.buffers, pixels[i : i + batch].to(device), False)[0].cpu()
                for i in range(0, len(pixels), batch)
            ]
            out.append(torch.cat(parts, 1))
    return torch.cat(out)


# ---------------------------------------------------------------------------- training


@dataclass
class Opt:
    """SGD as in the paper (App. E: lr 0.1, weight decay 5e-5, no momentum mentioned)."""

    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 5e-5


def per_model_finite(tensors, m, device="cpu"):
    ok = torch.ones(m, dtype=torch.bool, device=device)
    for t in tensors:
        if t is not None:
            ok &= torch.isfinite(t.reshape(m, -1)).all(1)
    return ok


def orthogonalize(g_forget, g_retain, m, eps=1e-12):
    """Per model: the forget gradient minus its projection on the retain gradient."""
    flat = lambda g: [t.reshape(m, -1) for t in g if t is not None]  # noqa: E731
    dot = sum((a * b).sum(1) for a, b in zip(flat(g_forget), flat(g_retain), strict=True))
    norm2 = sum((b * b).sum(1) for b in flat(g_retain))
    coef = dot / (norm2 + eps)
    out = []
    for gf, gr in zip(g_forget, g_retain, strict=True):
        if gf is None or gr is None:
            out.append(gf)
            continue
        out.append(gf - coef.view(-1, *[1] * (gf.dim() - 1)) * gr)
    return out


def run_steps(state: State, task, opt: Opt, vectorized=True, rows=None, device="cpu"):
    """Optimise the models of `state` on `task`; returns (new State, alive mask, losses).

    task.n_steps steps; task.loss(t, rows, student, ctx) returns per-model losses (M,) to
    minimise, or a pair (forget_loss, retain_loss) for gradient orthogonalisation (ascent on
    the forget loss along the part of its gradient orthogonal to the retain gradient).
    `rows` are the positions of these models in the task's per-model arrays. Training runs
    on `device`; the returned State is on the CPU.
    """
    m = state.n
    assert vectorized or m == 1, "the loop trainer runs one model at a time"
    rows = np.arange(m) if rows is None else np.asarray(rows)
    shell = template(state.config)
    fwd = make_forward(shell, vectorized)
    params = {
        k: v.detach().to(device, copy=True).requires_grad_(True) for k, v in state.params.items()
    }
    buffers = {k: v.to(device, copy=True) for k, v in state.buffers.items()}
    sgd = torch.optim.SGD(
        list(params.values()), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
    )
    alive = torch.ones(m, dtype=torch.bool, device=device)
    losses = []

    def student(x, train=True):
        return fwd(params, buffers, x, train)

    ctx = dict(params=params, fwd=fwd, device=device)
    plist = list(params.values())
    for t in range(task.n_steps):
        sgd.zero_grad(set_to_none=False)
        out = task.loss(t, rows, student, ctx)
        if isinstance(out, tuple):  # gradient orthogonalisation
            lf, lr_ = out
            ok = alive & torch.isfinite(lf.detach()) & torch.isfinite(lr_.detach())
            gf = torch.autograd.grad(
                torch.where(ok, lf, 0).sum(), plist, retain_graph=True, allow_unused=True
            )
            gr = torch.autograd.grad(torch.where(ok, lr_, 0).sum(), plist, allow_unused=True)
            for p, d in zip(plist, orthogonalize(gf, gr, m), strict=True):
                p.grad = torch.zeros_like(p) if d is None else -d  # SGD descends: -d ascends
            loss = lf.detach()
        else:
            loss = out
            ok = alive & torch.isfinite(loss.detach())
            torch.where(ok, loss, 0).sum().backward()
        ok &= per_model_finite([p.grad for p in plist], m, device)
        if not ok.all():  # a dead model keeps a zero gradient from now on
            for p in plist:
                if p.grad is not None:
                    p.grad[~ok] = 0
        alive &= ok
        sgd.step()
        losses.append(float(loss.detach()[alive].mean()) if alive.any() else float("nan"))
    new = State(
        {k: v.detach().cpu() for k, v in params.items()},
        {k: v.cpu() for k, v in buffers.items()},
        state.config,
        list(state.model_ids),
        dict(state.meta),
    )
    return new, alive.cpu(), losses


def train(state: State, task, opt: Opt, chunk=16, vectorized=True, device="cpu"):
    """All models of `state`, `chunk` at a time (vectorized) or one by one (the loop trainer).

    Returns the trained State; meta["alive"] is the per-model list of non-diverged flags and
    meta["seconds"] the wall time.
    """
    step = chunk if vectorized else 1
    t0 = time.perf_counter()
    parts, alive = [], []
    for a in range(0, state.n, step):
        rows = range(a, min(a + step, state.n))
        new, ok, _ = run_steps(state.take(rows), task, opt, vectorized, np.array(rows), device)
        parts.append(new)
        alive += ok.tolist()
    out = cat(parts)
    out.meta.update(alive=alive, seconds=time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------ data streams


def index_plan(pools, n_steps, batch, seeds):
    """(M, n_steps, batch) sample indices: model k walks its own pool in its own order.

    Each model's stream is a concatenation of independent permutations of its pool (one per
    epoch, drawn from its own seed), cut into batches: every step has the same shape for all
    models (what vmap needs), and a model with a smaller pool simply starts its next epoch
    sooner. The loop trainer reads the same plan, so both see identical batches.
    """
    out = np.empty((len(pools), n_steps, batch), dtype=np.int64)
    for k, (pool, seed) in enumerate(zip(pools, seeds, strict=True)):
        pool = np.asarray(pool)
        if len(pool) == 0:
            raise ValueError(f"model {k} has an empty data pool")
        rng = np.random.default_rng(seed)
        reps = -(-n_steps * batch // len(pool))
        stream = np.concatenate([rng.permutation(pool) for _ in range(reps)])
        out[k] = stream[: n_steps * batch].reshape(n_steps, batch)
    return out


def steps_for(pools, epochs, batch):
    """Steps for `epochs` passes over the largest pool."""
    return max(1, int(epochs) * -(-max(len(p) for p in pools) // batch))


class IdentityTask:
    """Margin-softmax identification training: model k sees plan[k] batches, own classes."""

    def __init__(self, pixels, labels, plan, class_mask, loss_hp=None):
        self.pixels, self.labels = pixels, torch.as_tensor(labels)
        self.plan, self.class_mask = torch.as_tensor(plan), torch.as_tensor(class_mask)
        self.loss_hp = dict(loss_hp or {})
        self.n_steps = plan.shape[1]

    def loss(self, t, rows, student, ctx):
        idx, dev = self.plan[rows, t], ctx["device"]  # (M, B) sample indices
        _, cos, _ = student(self.pixels[idx].to(dev))
        mask = self.class_mask[rows].to(dev)
        return identity_loss(cos, self.labels[idx].to(dev), mask, **self.loss_hp)


# --------------------------------------------------------------------------- benchmark


def compare_ensemble_vs_loop(state: State, task, opt: Opt, chunk=16):
    """Train the same models on the same plan both ways in one process; time both.

    Returns dict(vectorized_s, loop_s, ratio = loop_s / vectorized_s, max_abs_diff) where
    max_abs_diff is the largest weight difference between the two results.
    """
    vec = train(state, task, opt, chunk=chunk, vectorized=True)
    loop = train(state, task, opt, vectorized=False)
    diff = max(float((vec.params[k] - loop.params[k]).abs().max()) for k in vec.params)
    return dict(
        n_models=state.n,
        chunk=chunk,
        steps=task.n_steps,
        threads=torch.get_num_threads(),
        vectorized_s=vec.meta["seconds"],
        loop_s=loop.meta["seconds"],
        ratio=loop.meta["seconds"] / vec.meta["seconds"],
        max_abs_diff=diff,
    )
