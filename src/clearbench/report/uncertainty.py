"""Bootstrap intervals on the leaderboard: the interval columns, ties between adjacent ranks,
and the Forget-against-Retain picture with error bars (the intervals come from the metrics and
vision summaries: clearbench.metrics.resample, clearbench.vision.mia.intervals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clearbench.io import atomic_path

INTERVAL_KEYS = ["real", "retain", "forget", "log10_forget_quality", "u_lira", "u_mia",
                 "retain_acc"]  # fmt: skip
INTERVAL_COLUMNS = [f"{k}_{side}" for k in INTERVAL_KEYS for side in ("lo", "hi")]
REFERENCES = ("original", "gold")


def with_intervals(columns: list[str]) -> list[str]:
    """columns with <key>_lo, <key>_hi after each key that has intervals, tie_with_next after
    rank (Markdown tables then show "value [lo, hi]" in one cell)."""
    out = []
    for c in columns:
        out += [c, f"{c}_lo", f"{c}_hi"] if c in INTERVAL_KEYS else [c]
        out += ["tie_with_next"] if c == "rank" else []
    return out


# per track: the metric whose interval decides a tie of the rank's first key, and how that
# key reads an interval of the metric: (lo, hi) -> (key_lo, key_hi)
TIE_KEY = {
    "text": ("log10_forget_quality", lambda lo, hi: (lo, hi)),
    "vlm": ("log10_forget_quality", lambda lo, hi: (lo, hi)),
    "vision": ("u_lira", lambda lo, hi: (
        0.0 if lo <= 0.5 <= hi else min(abs(lo - 0.5), abs(hi - 0.5)),
        max(abs(lo - 0.5), abs(hi - 0.5)),
    )),
}  # fmt: skip
# the picture: x (what is kept), y (what should be gone) per track
AXES = {"text": ("retain", "forget"), "vlm": ("retain", "forget"),
        "vision": ("retain_acc", "u_lira")}  # fmt: skip


def tie_with_next(board: pd.DataFrame) -> pd.Series:
    """Per track and split, for each ranked row: does its interval of the ranking metric overlap
    that of the row ranked next (True: the two ranks are not told apart at the interval's
    level)? Null for the last rank, unranked rows and rows without intervals."""
    out = pd.Series(pd.array([pd.NA] * len(board), dtype="boolean"), index=board.index)
    for (track, _), group in board.groupby(["track", "split"], sort=False):
        if track not in TIE_KEY:
            continue
        metric, key = TIE_KEY[track]
        ranked = group[group["rank"].notna()].sort_values("rank")
        for (i, a), (_, b) in zip(ranked.iterrows(), ranked.iloc[1:].iterrows(), strict=False):
            bounds = [a[f"{metric}_lo"], a[f"{metric}_hi"], b[f"{metric}_lo"], b[f"{metric}_hi"]]
            if any(pd.isna(v) for v in bounds):
                continue
            (a_lo, a_hi), (b_lo, b_hi) = key(*bounds[:2]), key(*bounds[2:])
            out[i] = bool(a_lo <= b_hi and b_lo <= a_hi)
    return out


def plot_intervals(group: pd.DataFrame, path: Path) -> bool:
    """One track and split: what should be gone against what is kept, one point per method
    with its bootstrap intervals as error bars, the original and gold marked."""
    track = group["track"].iloc[0]
    if track not in AXES:
        return False
    x_key, y_key = AXES[track]
    need = [x_key, y_key, f"{x_key}_lo", f"{x_key}_hi", f"{y_key}_lo", f"{y_key}_hi"]
    rows = group.dropna(subset=[x_key, y_key])
    if rows.empty or rows[need[2:]].isna().all().all():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for _, r in rows.iterrows():
        x, y = float(r[x_key]), float(r[y_key])
        err = [[x - r[f"{x_key}_lo"], r[f"{x_key}_hi"] - x], [y - r[f"{y_key}_lo"],
               r[f"{y_key}_hi"] - y]]  # fmt: skip
        xerr, yerr = (None if np.isnan(np.asarray(e, float)).any() else np.array(e)[:, None]
                      for e in err)  # fmt: skip
        ref = r["method"] in REFERENCES
        style = dict(fmt="s" if ref else "o", ms=8 if ref else 5, capsize=2, lw=0.8,
                     color={"original": "black", "gold": "tab:green"}.get(r["method"]))  # fmt: skip
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, **style)
        label = r["method"] + ("+l1" if r["l1"] is True else "")
        if isinstance(r["modality"], str) and group["modality"].nunique() > 1:
            label += f" ({r['modality']})"
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if track == "vision":
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")  # unexposed
    ax.set_xlabel(f"{x_key} (higher is better)")
    ax.set_ylabel(f"{y_key} ({'0.5' if track == 'vision' else 'the gold model’s'} is the aim)")
    ax.set_title(f"{track} / {group['split'].iloc[0]}: bootstrap intervals "
                 "(black: original, green: gold)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return True
