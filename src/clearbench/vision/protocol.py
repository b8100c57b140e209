"""The vision membership-inference protocol (DESIGN.md section 8, CLEAR App. E).

Fixed forget F and holdout H identities (10 % each). Models 0..M/2-1 train on F plus a random
half of the other identities, models M/2..M-1 on H plus a random half; the "forget side" of
model k is F for k < M/2, else H, and the other side is its holdout (never trained). Per side,
half the models are targets, half shadows. Gold models: the same training without the forget
side. Every method unlearns every model on its own forget side; each model then scores every
non-enrollment image of F, H and its retain identities:

    phi = phi_from_cosine(cos(embedding, centroid of the image's identity))

with centroids enrolled by the same model from 5 images per identity, and `correct` = the
nearest centroid over all identities is the right one. The scores table is the contract of
`python -m clearbench mia`.

Steps (each a function and a `python -m clearbench vision <step>` command):
pretrain (celebs -> model folder), train (-> state file of M stacked models; --gold for the
gold models), unlearn (state + method -> state), score (state -> scores.parquet + metrics),
relearn (the relearning attack: a chunk of any family -> its scores without the relearned photos).
train and unlearn can also score their own models (--scores, --meta); `vision collect` and
`vision report` (clearbench.vision.report, no torch) merge chunks and draw Table 2 / Figure 6.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from clearbench.io import read_parquet
from clearbench.vision import ensemble as ens
from clearbench.vision import methods as vmethods
from clearbench.vision import mia
from clearbench.vision import model as vm
from clearbench.vision.registry import EDITS, HP

DEFAULT_HP = dict(
    seed=0,
    image_size=32,  # images are resized to this square size
    n_enroll=5,  # enrollment images per identity (paper: 5)
    n_models=16,  # M, a multiple of 4 (paper: 128)
    chunk=16,  # models trained at once by one vmapped ensemble
    device="cpu",  # cpu | cuda | auto (cuda when available); the paper profile wants a GPU
    model=dict(config=vm.TINY_CONFIG, embedding_dim=64),  # or checkpoint: microsoft/resnet-18
    loss=dict(kind="cosface", s=16.0, m=0.2),
    # Paper App. E: SGD lr 0.1, batch 256, weight decay 5e-5, 20 epochs (pretraining: 100).
    pretrain=dict(
        epochs=20, batch_size=64, lr=0.1, momentum=0.0, weight_decay=5e-5, test_fraction=0.2
    ),
    train=dict(epochs=20, batch_size=64, lr=0.1, momentum=0.0, weight_decay=5e-5),
    # Unlearning: the paper gives no vision values; epochs over each model's forget pool.
    unlearn=dict(
        epochs=5, batch_size=32, lr=0.01, momentum=0.9, weight_decay=5e-5, method_hp={}
    ),  # method_hp: {name: {kwarg: v, lr: .., epochs: ..}}
    # The relearning attack (relearn_models): plain SGD as in training, a few small steps
    # (batch norm is frozen, so lr 0.01 with momentum 0.9 already overshoots on the test build)
    attacks=dict(
        relearn=dict(
            steps=10,
            batch_size=32,
            lr=0.01,
            momentum=0.0,
            weight_decay=5e-5,
            forget_fraction=0.25,
            seed=0,
        )
    ),
)
OPT_KEYS = ("lr", "momentum", "weight_decay")


def merge(base, over):
    """Deep merge of dicts (over wins)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def seed_of(*parts) -> int:
    """A 63-bit seed from a tuple of ints (model index, purpose, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def device_of(hp) -> str:
    d = hp.get("device", "cpu")
    return ("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d


def opt_of(section: dict) -> ens.Opt:
    return ens.Opt(**{k: section[k] for k in OPT_KEYS})


# ----------------------------------------------------------------------------- data


def load_images(parquet, size=None):
    """Decode an image table (HF `datasets` Image column: struct {bytes: PNG, path}).

    parquet: a path or a DataFrame. Returns (uint8 array (N, H, W, 3), ids) where ids is the
    table without the image column plus `identity` (= `author_id` where there is no identity
    column). size: resize to size x size (Lanczos) if given.
    """
    df = parquet if isinstance(parquet, pd.DataFrame) else read_parquet(parquet)
    images = []
    for cell in df["image"]:
        data = cell["bytes"] if isinstance(cell, dict) else cell
        im = Image.open(io.BytesIO(data)).convert("RGB")
        if size and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        images.append(np.asarray(im, dtype=np.uint8))
    ids = df.drop(columns=["image"]).reset_index(drop=True)
    if "identity" not in ids:
        ids["identity"] = ids["author_id"]
    return np.stack(images), ids


@dataclass
class VisionData:
    """CLEAR photos as tensors: pixels (N, 3, S, S), labels = index into `identities`."""

    pixels: torch.Tensor
    labels: np.ndarray
    sample_ids: np.ndarray
    identities: np.ndarray  # author ids, sorted; class c is identities[c]
    forget: np.ndarray  # class indices of F
    holdout: np.ndarray  # class indices of H
    enroll: np.ndarray  # (N,) bool: the n_enroll enrollment images of each identity

    @property
    def n_classes(self):
        return len(self.identities)


def vision_data(full, split, size=32, n_enroll=5) -> VisionData:
    """full.parquet (or DataFrame) + vision_split.parquet -> VisionData.

    Enrollment images: the first n_enroll photos of each identity in sample_id order (fixed,
    so the same images are enrolled by every model and every scored sample_id is shared).
    """
    images, ids = load_images(full, size)
    split = split if isinstance(split, pd.DataFrame) else read_parquet(split)
    identities = np.array(sorted(ids["identity"].unique()))
    labels = np.searchsorted(identities, ids["identity"].to_numpy())
    role = dict(zip(split["author_id"], split["role"], strict=True))
    cls = lambda r: np.array([c for c, a in enumerate(identities) if role.get(a) == r])  # noqa: E731
    order = np.lexsort((ids["sample_id"].astype(str).to_numpy(), labels))
    rank = np.empty(len(labels), dtype=int)
    for c in range(len(identities)):
        rows = order[labels[order] == c]
        if len(rows) <= n_enroll:
            raise ValueError(f"identity {identities[c]} has {len(rows)} photos; need > {n_enroll}")
        rank[rows] = np.arange(len(rows))
    forget, holdout = cls("forget"), cls("holdout")
    if len(forget) == 0 or len(holdout) == 0:
        raise ValueError("vision split needs forget and holdout identities")
    return VisionData(
        vm.to_pixels(images),
        labels,
        ids["sample_id"].to_numpy(),
        identities,
        forget,
        holdout,
        rank < n_enroll,
    )


# ----------------------------------------------------------------------- assignment


@dataclass
class Assignment:
    """Which identities each model trains on, its forget side and its role."""

    train: np.ndarray  # (M, C) bool: model k trains on identity c (original models)
    side: np.ndarray  # (M, C) bool: model k's forget side (F for k < M/2, else H)
    other_side: np.ndarray  # (M, C) bool: its holdout (the other fixed set; never trained)
    role: np.ndarray  # (M,) "target" | "shadow"

    @property
    def retain(self):
        return self.train & ~self.side

    def groups(self, k):
        """Per class, the group of model k: 'forget' | 'holdout' | 'retain' | None (not scored)."""
        g = np.full(self.train.shape[1], None, dtype=object)
        g[self.retain[k]] = "retain"
        g[self.other_side[k]] = "holdout"
        g[self.side[k]] = "forget"
        return g


def make_assignment(n_classes, forget, holdout, n_models, seed=0) -> Assignment:
    if n_models % 4 or n_models < 4:
        raise ValueError(f"n_models must be a positive multiple of 4, got {n_models}")
    others = np.setdiff1d(np.arange(n_classes), np.union1d(forget, holdout))
    half = n_models // 2
    train = np.zeros((n_models, n_classes), bool)
    side = np.zeros_like(train)
    other_side = np.zeros_like(train)
    for k in range(n_models):
        mine, theirs = (forget, holdout) if k < half else (holdout, forget)
        rng = np.random.default_rng(seed_of(seed, k, 11))
        train[k, rng.choice(others, len(others) // 2, replace=False)] = True
        train[k, mine] = side[k, mine] = True
        other_side[k, theirs] = True
    role = np.empty(n_models, dtype=object)
    rng = np.random.default_rng(seed_of(seed, 12))
    for start in (0, half):  # per side: a random half targets, the rest shadows
        perm = start + rng.permutation(half)
        role[perm[: half // 2]], role[perm[half // 2 :]] = "target", "shadow"
    return Assignment(train, side, other_side, role)


def assignment_for(data: VisionData, hp) -> Assignment:
    hp = merge(DEFAULT_HP, hp)
    return make_assignment(data.n_classes, data.forget, data.holdout, hp["n_models"], hp["seed"])


def pools(data, class_mask):
    """Per model: indices of the samples of its classes."""
    return [np.flatnonzero(row[data.labels]) for row in class_mask]


# ---------------------------------------------------------------------------- steps


def pretrain(images, identity, hp) -> tuple[vm.IdentityModel, dict]:
    """The paper's celebrity pretraining: one model, margin softmax over the train celebs.

    A test_fraction of the celebrities is held out; the metrics report nearest-centroid
    identification on held-in and held-out celebrities (paper: 99.0 % / 83.4 %).
    """
    hp = merge(DEFAULT_HP, hp)
    p = hp["pretrain"]
    ids = np.array(sorted(set(np.asarray(identity).tolist())))
    rng = np.random.default_rng(seed_of(hp["seed"], 21))
    n_test = int(round(p.get("test_fraction", 0.0) * len(ids)))
    test_ids = set(rng.choice(ids, n_test, replace=False).tolist()) if n_test else set()
    train_ids = np.array([i for i in ids if i not in test_ids])
    pixels = vm.to_pixels(images)
    labels = np.searchsorted(ids, np.asarray(identity))  # over all celebs
    is_train = np.isin(np.asarray(identity), train_ids)
    train_labels = np.searchsorted(train_ids, np.asarray(identity)[is_train])
    model = vm.build_model(hp["model"], len(train_ids), seed=hp["seed"])
    t0 = time.perf_counter()
    if p["epochs"] > 0:
        tr_pixels = pixels[torch.as_tensor(is_train)]
        pool = [np.arange(len(train_labels))]
        plan = ens.index_plan(
            pool,
            ens.steps_for(pool, p["epochs"], p["batch_size"]),
            p["batch_size"],
            [seed_of(hp["seed"], 22)],
        )
        task = ens.IdentityTask(
            tr_pixels, train_labels, plan, np.ones((1, len(train_ids)), bool), hp["loss"]
        )
        state = ens.train(
            ens.stack([model]), task, opt_of(p), vectorized=False, device=device_of(hp)
        )
        if not state.meta["alive"][0]:
            raise RuntimeError("pretraining diverged (non-finite loss); lower pretrain.lr")
        model = ens.unstack(state, 0)
    metrics = dict(seconds=time.perf_counter() - t0, n_train_ids=len(train_ids), n_test_ids=n_test)
    emb = ens.embed(ens.stack([model]), pixels, device=device_of(hp))[0]
    enroll = _first_n(labels, hp["n_enroll"])
    _, pred = vm.identify(emb, vm.enroll(emb, labels, enroll, len(ids)))
    right = (pred.numpy() == labels) & ~enroll
    for name, sel in (("train_acc", is_train), ("test_acc", ~is_train)):
        sel = sel & ~enroll
        metrics[name] = float(right[sel].sum() / sel.sum()) if sel.any() else None
    return model, metrics


def _first_n(labels, n):
    """The first n images (table order) of each label."""
    seen, out = {}, np.zeros(len(labels), bool)
    for i, c in enumerate(labels):
        seen[c] = seen.get(c, 0) + 1
        out[i] = seen[c] <= n
    return out


def train_models(
    base: vm.IdentityModel, data: VisionData, hp, models=None, gold=False, vectorized=True
) -> ens.State:
    """Finetune the M protocol models (or the `models` subset) from the pretrained `base`.

    Every model starts from the same pretrained backbone with its own classifier init (seeded
    by model index) and draws its own data order. gold=True drops the forget side.
    """
    hp = merge(DEFAULT_HP, hp)
    a = assignment_for(data, hp)
    rows = list(range(hp["n_models"])) if models is None else list(models)
    mask = (a.retain if gold else a.train)[rows]
    nets = [
        copy.deepcopy(base).new_classes(data.n_classes, seed_of(hp["seed"], k, 31) % 2**31)
        for k in rows
    ]
    state = ens.stack(nets, rows, meta=dict(kind="gold" if gold else "original"))
    p = hp["train"]
    pl = pools(data, mask)
    plan = ens.index_plan(
        pl,
        ens.steps_for(pl, p["epochs"], p["batch_size"]),
        p["batch_size"],
        [seed_of(hp["seed"], k, 32) for k in rows],
    )
    task = ens.IdentityTask(data.pixels, data.labels, plan, mask, hp["loss"])
    out = ens.train(state, task, opt_of(p), hp["chunk"], vectorized, device_of(hp))
    out.meta.update(status=["ok" if ok else "diverged" for ok in out.meta["alive"]])
    return out


def unlearn_task(state: ens.State, data: VisionData, method: str, hp):
    """The unlearning task of `state`'s models and its optimizer settings: model k unlearns
    its forget side (all its photos) with retain batches of its retain identities; the
    teacher is `state` itself (the original models). Per-method overrides come from
    unlearn.method_hp.<method> (lr, momentum, weight_decay, epochs, batch_size, method kwargs).
    """
    hp = merge(DEFAULT_HP, hp)
    a = assignment_for(data, hp)
    rows, u = state.model_ids, hp["unlearn"]
    mhp = dict(u.get("method_hp", {}).get(method, {}))
    opt = ens.Opt(**{k: mhp.pop(k, u[k]) for k in OPT_KEYS})
    epochs, batch = mhp.pop("epochs", u["epochs"]), mhp.pop("batch_size", u["batch_size"])
    fpool, rpool = pools(data, a.side[rows]), pools(data, a.retain[rows])
    n_steps = ens.steps_for(fpool, epochs, batch)
    seeds = lambda tag: [seed_of(hp["seed"], k, tag) for k in rows]  # noqa: E731
    task = vmethods.UnlearnTask(
        method,
        data.pixels,
        data.labels,
        forget_plan=ens.index_plan(fpool, n_steps, batch, seeds(41)),
        retain_plan=ens.index_plan(rpool, n_steps, batch, seeds(42)),
        class_mask=a.train[rows],
        retain_mask=a.retain[rows],
        teacher=state,
        seeds=[s % 2**31 for s in seeds(43)],
        method_hp=mhp,
        loss_hp=hp["loss"],
    )
    return task, opt


def unlearn_models(state: ens.State, data: VisionData, method: str, hp, vectorized=True):
    """Unlearn every model of `state` on its own forget side with `method`; record RTE
    (meta["rte_seconds"]: wall time of the whole family) and per-model status."""
    hp = merge(DEFAULT_HP, hp)
    if method in EDITS:
        return edit_models(state, data, method, hp)
    task, opt = unlearn_task(state, data, method, hp)
    out = ens.train(state, task, opt, hp["chunk"], vectorized, device_of(hp))
    before = state.meta.get("status", ["ok"] * state.n)
    status = [
        "diverged" if (not ok or b != "ok") else "ok"
        for ok, b in zip(out.meta["alive"], before, strict=True)
    ]
    out.meta.update(kind=method, status=status, rte_seconds=out.meta["seconds"])
    return out


# Unlink's defaults: the embedding head (the paper edits the last layer for class forgetting;
# adding the last residual block's convolutions moved U-LIRA no further on `default`)
UNLINK_HP = dict(
    n_samples=16,
    k=8,
    layers=["proj"],
    variant="plain",
    n_retain=50,
    ridge=1e-3,
    max_rows=4096,
    seed=0,
)


def draw(rng, rows, n):
    return rng.choice(rows, min(n, len(rows)), replace=False)


def forward_on(model, pixels, rows):
    return lambda: model(pixels[rows])


def edit_models(state: ens.State, data: VisionData, method: str, hp) -> ens.State:
    """A training-free edit (Unlink, clearbench.unlink) of every model, one at a time: the
    subspace of n_samples photos of its own forget side (seeded; in eval mode, so
    batch norm uses its running statistics) is removed from the chosen layers' weights. The
    entangled variant also reads n_retain photos of the model's retain identities. RTE: the
    wall time of collecting features and editing, summed over the models."""
    from clearbench.unlink import unlink

    hp = merge(DEFAULT_HP, hp)
    a = assignment_for(data, hp)
    mhp = UNLINK_HP | hp["unlearn"].get("method_hp", {}).get(method, {})
    unknown = sorted(mhp.keys() - HP[method].keys())
    if unknown:
        raise ValueError(f"vision.unlearn.method_hp.{method}: unknown key {unknown[0]!r}")
    out, spent = state.take(range(state.n)), 0.0
    for r, k in enumerate(state.model_ids):
        rng = np.random.default_rng(seed_of(hp["seed"], mhp["seed"], k, 44))
        forget = draw(rng, np.flatnonzero(a.side[k][data.labels]), mhp["n_samples"])
        retain = draw(rng, np.flatnonzero(a.retain[k][data.labels]), mhp["n_retain"])
        model = ens.unstack(state, r).eval()
        run = partial(forward_on, model, data.pixels)
        start = time.perf_counter()
        unlink(
            model, mhp["layers"], run(forget),
            run(retain) if mhp["variant"] == "entangled" else None,
            k=mhp.get("k") if "energy" not in mhp else None, energy=mhp.get("energy"),
            variant=mhp["variant"], ridge=mhp["ridge"], max_rows=mhp["max_rows"], seed=mhp["seed"],
        )  # fmt: skip
        spent += time.perf_counter() - start
        weights = model.state_dict()
        for name in out.params:
            out.params[name][r] = weights[name]
    alive = [bool(torch.isfinite(torch.stack([p[r].abs().sum() for p in out.params.values()])).all())
             for r in range(out.n)]  # fmt: skip
    before = state.meta.get("status", ["ok"] * state.n)
    status = ["ok" if ok and b == "ok" else "diverged" for ok, b in zip(alive, before, strict=True)]
    out.meta.update(kind=method, status=status, alive=alive, rte_seconds=spent, seconds=spent)
    return out


def score_models(state: ens.State, data: VisionData, hp) -> pd.DataFrame:
    """The scores table (DESIGN.md section 8) of every non-diverged model in `state`."""
    hp = merge(DEFAULT_HP, hp)
    a = assignment_for(data, hp)
    emb = ens.embed(state, data.pixels, hp["chunk"], device=device_of(hp))  # (M, N, D)
    cos, pred = vm.identify(emb, vm.enroll(emb, data.labels, data.enroll, data.n_classes))
    own = cos.gather(-1, torch.as_tensor(data.labels).expand(state.n, -1).unsqueeze(-1))[..., 0]
    phi = mia.phi_from_cosine(own.numpy())
    correct = pred.numpy() == data.labels
    status = state.meta.get("status", ["ok"] * state.n)
    frames = []
    for r, k in enumerate(state.model_ids):
        if status[r] != "ok":
            continue  # a diverged model has no trustworthy scores: no rows, status says why
        group = a.groups(k)[data.labels]
        keep = (group != None) & ~data.enroll  # noqa: E711  (object array)
        frames.append(
            pd.DataFrame(
                dict(
                    model=np.full(keep.sum(), k, dtype=np.int64),
                    role=a.role[k],
                    group=group[keep].astype(str),
                    identity=data.identities[data.labels[keep]],
                    sample_id=data.sample_ids[keep],
                    phi=phi[r][keep].astype(np.float64),
                    correct=correct[r][keep],
                )
            )
        )
    if not frames:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in zip(
                    mia.COLUMNS,
                    ["int64", object, object, "int64", object, "float64", bool],
                    strict=True,
                )
            }
        )
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------- relearning attack


def relearn_hp(hp) -> dict:
    """vision.attacks.relearn merged over its defaults; a one-line ValueError on a bad key."""
    r = merge(DEFAULT_HP, hp)["attacks"]["relearn"]
    unknown = sorted(r.keys() - DEFAULT_HP["attacks"]["relearn"].keys())
    if unknown:
        raise ValueError(f"vision.attacks.relearn: unknown key {unknown[0]!r}")
    if not 0 < r["forget_fraction"] < 1:
        raise ValueError("vision.attacks.relearn.forget_fraction must be in (0, 1)")
    if int(r["steps"]) < 1 or int(r["batch_size"]) < 1:
        raise ValueError("vision.attacks.relearn: steps and batch_size must be >= 1")
    return r


def relearn_slice(data: VisionData, hp) -> np.ndarray:
    """(N,) bool: the photos the attacker relearns on. Per identity of F and of H, a seeded
    forget_fraction of its scored (non-enrollment) photos, at least one and never all, so
    every identity keeps photos to score. The slice depends on the data and the seeds only:
    every chunk of every family relearns on (its side of) the same photos."""
    hp = merge(DEFAULT_HP, hp)
    r = relearn_hp(hp)
    out = np.zeros(len(data.labels), bool)
    for c in np.concatenate([data.forget, data.holdout]):
        rows = np.flatnonzero((data.labels == c) & ~data.enroll)
        if len(rows) < 2:
            raise ValueError(f"identity {data.identities[c]}: relearning needs 2 scored photos")
        n = min(max(1, round(r["forget_fraction"] * len(rows))), len(rows) - 1)
        rng = np.random.default_rng(seed_of(hp["seed"], r["seed"], c, 51))
        out[rng.choice(rows, n, replace=False)] = True
    return out


class _FrozenNorm:
    """`task` with batch norm in eval mode (each model's running statistics are used and kept),
    ticking a progress bar once per step. In train mode, ten steps on the photos of a few
    identities would rewrite the running statistics every image is scored with: that
    distorts all embeddings (on the test build it drove the IN-OUT phi gap below zero even at
    lr 1e-3) instead of relearning anything."""

    def __init__(self, task, bar):
        self.task, self.bar, self.n_steps = task, bar, task.n_steps

    def loss(self, t, rows, student, ctx):
        self.bar.update(1)
        return self.task.loss(t, rows, lambda x, train=False: student(x, False), ctx)


def relearn_models(state: ens.State, data: VisionData, hp, vectorized=True) -> ens.State:
    """The relearning attack (Hu et al. 2024; Lynch et al. 2024) on every model of `state`,
    targets and shadows alike: `steps` SGD steps of the identification loss on the relearn
    slice of the model's own forget side (F for k < M/2, else H), over the classes it was
    trained on plus that side, batch norm frozen (_FrozenNorm). Gold models have the same
    forget side (the identities their original twin trained on), so they relearn the same
    photos: a gold model never saw them, which makes its result the floor of what relearning
    alone gives away.

    meta: status (diverged stays diverged), rte_seconds kept from `state` (the family's),
    relearn_seconds (this attack's wall time).
    """
    from tqdm import tqdm

    hp = merge(DEFAULT_HP, hp)
    r, a = relearn_hp(hp), assignment_for(data, hp)
    rows, part = state.model_ids, relearn_slice(data, hp)
    pl = [np.flatnonzero(part & a.side[k][data.labels]) for k in rows]
    plan = ens.index_plan(
        pl,
        int(r["steps"]),
        int(r["batch_size"]),
        [seed_of(hp["seed"], r["seed"], k, 52) for k in rows],
    )
    task = ens.IdentityTask(data.pixels, data.labels, plan, a.train[rows], hp["loss"])
    n_runs = -(-state.n // hp["chunk"]) if vectorized else state.n
    with tqdm(total=n_runs * task.n_steps, desc="relearn", mininterval=2) as bar:
        out = ens.train(
            state, _FrozenNorm(task, bar), opt_of(r), hp["chunk"], vectorized, device_of(hp)
        )
    before = state.meta.get("status", ["ok"] * state.n)
    status = [
        "ok" if ok and b == "ok" else "diverged"
        for ok, b in zip(out.meta["alive"], before, strict=True)
    ]
    rte = state.meta.get("rte_seconds", state.meta.get("seconds"))
    out.meta.update(status=status, rte_seconds=rte, relearn_seconds=out.meta["seconds"])
    return out


def relearn_scores(state: ens.State, data: VisionData, hp) -> pd.DataFrame:
    """score_models of relearned models without the relearn slice's photos: every model
    drops the same sample_ids, so U-LIRA compares the same examples across models."""
    scores = score_models(state, data, hp)
    taken = set(data.sample_ids[relearn_slice(data, hp)].tolist())
    return scores[~scores["sample_id"].isin(taken)].reset_index(drop=True)


def chunk_meta(state: ens.State) -> dict:
    """What a family summary needs of one chunk of models, as plain JSON: ids, status, RTE
    (unlearning time; for original/gold models, their training time)."""
    meta = state.meta
    return dict(
        kind=meta.get("kind"),
        model_ids=[int(k) for k in state.model_ids],
        status=list(meta.get("status", ["ok"] * state.n)),
        rte_seconds=meta.get("rte_seconds", meta.get("seconds")),
    )


def summarize(state: ens.State, scores: pd.DataFrame) -> dict:
    """mia numbers + status and RTE of one model family (a leaderboard row's vision part)."""
    from clearbench.vision.report import summarize_family

    return summarize_family([chunk_meta(state)], scores)


def run_protocol(celebs, full, split, hp=None, methods=("retain_ft",), progress=print):
    """Everything in one process: pretrain, originals, golds, every method, scores.

    celebs/full/split: parquet paths or DataFrames. Returns dict(scores={name: DataFrame},
    summary={name: dict}, seconds={phase: s}) with names "original", "gold" and each method.
    """
    hp = merge(DEFAULT_HP, hp)
    t = {}
    t0 = time.perf_counter()
    c_images, c_ids = load_images(celebs, hp["image_size"])
    base, pre = pretrain(c_images, c_ids["identity"].to_numpy(), hp)
    t["pretrain"] = time.perf_counter() - t0
    progress(f"pretrain: {pre}")
    data = vision_data(full, split, hp["image_size"], hp["n_enroll"])
    states = {}
    for name, gold in (("original", False), ("gold", True)):
        t0 = time.perf_counter()
        states[name] = train_models(base, data, hp, gold=gold)
        t[name] = time.perf_counter() - t0
        progress(f"{name}: {t[name]:.1f}s")
    for m in methods:
        states[m] = unlearn_models(states["original"], data, m, hp)
        t[m] = states[m].meta["rte_seconds"]
        progress(f"{m}: {t[m]:.1f}s")
    scores = {name: score_models(s, data, hp) for name, s in states.items()}
    summary = {name: summarize(states[name], scores[name]) for name in states}
    return dict(scores=scores, summary=summary, seconds=t, pretrain=pre)


# ------------------------------------------------------------------------------ CLI


def _hp(arg):
    """--hp: a JSON string, or a JSON/YAML file (a params.yaml: its `vision` section)."""
    if not arg:
        return {}
    path = Path(arg)
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        import yaml

        d = yaml.safe_load(path.read_text())
        return d.get("vision", d) if isinstance(d, dict) else {}
    return json.loads(arg)


def _models(arg, n):
    if not arg:
        return None
    a, _, b = arg.partition(":")
    return range(int(a or 0), int(b or n))


def main(argv=None):
    p = argparse.ArgumentParser(prog="clearbench vision", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("pretrain", help="celebs.parquet -> pretrained model folder")
    s.add_argument("--celebs", required=True)
    s.add_argument("--out", required=True, help="model folder (save_pretrained + head)")
    helps = dict(
        train="pretrained model -> state file of the M original (or --gold) models",
        unlearn="original state + method -> unlearned state (RTE and status in its meta)",
        score="state file(s) -> scores.parquet (+ --metrics JSON: mia, status, RTE)",
    )
    for name, text in helps.items():
        s = sub.add_parser(name, help=text)
        s.add_argument("--full", required=True)
        s.add_argument("--split", required=True)
        s.add_argument("--out", required=True)
        if name == "train":
            s.add_argument("--pretrained", required=True, help="folder written by pretrain")
            s.add_argument("--gold", action="store_true", help="train without the forget side")
            s.add_argument("--models", help="a:b, a slice of the M models (default: all)")
        elif name == "unlearn":
            s.add_argument("--state", required=True, help="state file of the original models")
        else:
            s.add_argument(
                "--state",
                required=True,
                nargs="+",
                help="state file(s): chunk files of one model family are scored together",
            )
        if name == "unlearn":
            s.add_argument("--method", required=True, choices=sorted(HP))
        if name == "score":
            s.add_argument("--metrics", help="also write the mia + status JSON here")
        else:  # the pipeline scores each chunk in the job that made it (one import, one load)
            s.add_argument("--scores", help="also write this chunk's scores table here")
            s.add_argument("--meta", help="and its status / RTE JSON (for `vision collect`)")
    s = sub.add_parser(
        "relearn", help="state of one chunk -> its scores after the relearning attack"
    )
    s.add_argument("--full", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--state", required=True, help="state file of one chunk (any family)")
    s.add_argument("--out", required=True, help="the relearned chunk's scores table")
    s.add_argument("--meta", help="also write its status / RTE JSON (for `vision collect`)")
    for s in sub.choices.values():
        s.add_argument("--hp", help="vision hyperparameters: JSON string or params file")
        s.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    args = p.parse_args(argv)
    hp = merge(DEFAULT_HP, _hp(args.hp))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(hp["seed"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.step == "pretrain":
        images, ids = load_images(args.celebs, hp["image_size"])
        model, metrics = pretrain(images, ids["identity"].to_numpy(), hp)
        vm.save_model(model, out)
        mia.write_json_atomic(out / "metrics.json", metrics)
        print(json.dumps(metrics))
        return 0
    data = vision_data(args.full, args.split, hp["image_size"], hp["n_enroll"])
    if args.step == "relearn":
        state = relearn_models(ens.State.load(args.state), data, hp)
        mia.write_parquet_atomic(relearn_scores(state, data, hp), out)
        meta = chunk_meta(state) | dict(relearn_seconds=state.meta["relearn_seconds"])
        if args.meta:
            mia.write_json_atomic(args.meta, meta)
        print(json.dumps(meta))
        return 0
    if args.step in ("train", "unlearn"):
        if args.step == "train":
            base = vm.load_model(args.pretrained)
            models = _models(args.models, hp["n_models"])
            state = train_models(base, data, hp, models, args.gold)
        else:
            state = unlearn_models(ens.State.load(args.state), data, args.method, hp)
        state.save(out)
        if args.scores:
            mia.write_parquet_atomic(score_models(state, data, hp), args.scores)
        if args.meta:
            mia.write_json_atomic(args.meta, chunk_meta(state))
        print(json.dumps(chunk_meta(state)))
    else:
        from clearbench.vision.report import summarize_family

        parts = [ens.State.load(path) for path in args.state]
        scores = score_models(ens.cat(parts), data, hp)
        mia.write_parquet_atomic(scores, out)
        summary = summarize_family([chunk_meta(part) for part in parts], scores)
        if args.metrics:
            mia.write_json_atomic(args.metrics, summary)
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
