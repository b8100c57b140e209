"""The clip track's data: every CLEAR author and every real_faces person is one identity.

Labels 0..C-1 with the authors first (sorted by author_id), then the real_faces people (sorted
by celeb_id). Each identity's photos are split into train and eval by a seeded permutation, so
the zero-shot evaluation is on photos no model trained on. Groups: `target` (the authors of the
forget split), `other` (the other authors), `real_faces`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clearbench.io import read_parquet
from clearbench.vision.protocol import load_images

GROUPS = ("target", "other", "real_faces")


@dataclass
class ClipData:
    pixels: np.ndarray  # uint8 (N, S, S, 3)
    labels: np.ndarray  # int (N,), index into names
    names: list[str]  # per identity
    groups: list[str]  # per identity: target | other | real_faces
    train: np.ndarray  # bool (N,): a training photo (else an eval photo)
    sample_ids: np.ndarray  # str (N,)

    @property
    def n_identities(self) -> int:
        return len(self.names)

    def labels_in(self, group: str) -> list[int]:
        return [c for c, g in enumerate(self.groups) if g == group]


def split_photos(labels: np.ndarray, eval_fraction: float, seed: int) -> np.ndarray:
    """Train mask: per identity a seeded permutation of its photos, the first
    floor(n * eval_fraction) (at least 1, at most n - 1) held out for evaluation."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    train = np.ones(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise ValueError(f"identity {c} has {len(idx)} photo(s): needs 1 train + 1 eval")
        n_eval = min(len(idx) - 1, max(1, int(len(idx) * eval_fraction + 1e-9)))
        perm = np.random.default_rng([seed, int(c)]).permutation(idx)
        train[perm[:n_eval]] = False
    return train


def _table(path, id_col: str) -> pd.DataFrame:
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: {path}")
    df = read_parquet(path)
    missing = [c for c in (id_col, "name", "image", "sample_id") if c not in df]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return df.sort_values([id_col, "sample_id"], kind="stable").reset_index(drop=True)


def load_clip_data(
    full, real_faces, split, image_size: int = 32, eval_fraction: float = 0.3, seed: int = 0
) -> ClipData:
    """full.parquet + real_faces.parquet + the forget split's parquet -> ClipData."""
    authors = _table(full, "author_id")
    celebs = _table(real_faces, "celeb_id")
    target = set(_table(split, "author_id")["author_id"])
    unknown = target - set(authors["author_id"])
    if unknown:
        raise ValueError(f"{split}: author(s) {sorted(unknown)[:5]} are not in {full}")
    names, groups, labels, pixels, sample_ids = [], [], [], [], []
    for df, id_col in ((authors, "author_id"), (celebs, "celeb_id")):
        ids = df[id_col].to_numpy()
        uniq = list(dict.fromkeys(ids))  # sorted already
        label_of = {i: len(names) + k for k, i in enumerate(uniq)}
        for i in uniq:
            names.append(str(df.loc[ids == i, "name"].iloc[0]))
            if id_col == "celeb_id":
                groups.append("real_faces")
            else:
                groups.append("target" if i in target else "other")
        labels.append(np.array([label_of[i] for i in ids], dtype=np.int64))
        pixels.append(load_images(df[["image"]].assign(identity=ids), image_size)[0])
        sample_ids.append(df["sample_id"].astype(str).to_numpy())
    labels = np.concatenate(labels)
    return ClipData(
        pixels=np.concatenate(pixels),
        labels=labels,
        names=names,
        groups=groups,
        train=split_photos(labels, eval_fraction, seed),
        sample_ids=np.concatenate(sample_ids),
    )
