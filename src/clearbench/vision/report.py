"""Vision-track report pieces: Figure 6 (phi of forget vs holdout per method) and Table 2.

Both read only scores tables (the section 8 contract) plus the per-method status/RTE summary,
so results of external models can be drawn and tabulated the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from clearbench.vision import mia

TABLE2_COLUMNS = [
    "method",
    "forget_acc",
    "holdout_acc",
    "retain_acc",
    "u_lira",
    "u_mia",
    "rte_seconds",
    "status",
]


def figure6(scores: dict, path, bins=40):
    """One panel per method: histograms of phi on forget vs holdout rows (all models).

    scores: {method: scores DataFrame}. Overlapping distributions = successful unlearning.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    phis = [s.loc[s["group"].isin(["forget", "holdout"]), "phi"] for s in scores.values()]
    finite = np.concatenate([p[np.isfinite(p)].to_numpy() for p in phis] or [np.zeros(1)])
    # cos <= 0 maps to one floor value (phi_from_cosine clips); keep the axis on the bulk and
    # let the clipped mass show up as the first bin instead of stretching the axis to it
    floor = float(mia.phi_from_cosine(0.0))
    bulk = finite[finite > floor + 1e-6]
    lo, hi = np.percentile(bulk, [0.5, 99.5]) if bulk.size else (floor, floor + 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for ax, name in zip(axes.flat, names, strict=False):
        df = scores[name]
        for group, color in (("forget", "tab:red"), ("holdout", "tab:blue")):
            v = df.loc[df["group"] == group, "phi"].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(
                    np.clip(v, edges[0], edges[-1]),
                    bins=edges,
                    density=True,
                    alpha=0.5,
                    color=color,
                    label=group,
                )
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("phi = logit cos(emb, centroid); tails in edge bins", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table2(scores: dict, summary: dict | None = None) -> pd.DataFrame:
    """Forget / holdout / retain accuracy, U-LIRA, U-MIA, RTE and status per method."""
    rows = []
    for name, df in scores.items():
        s = dict(summary.get(name, {})) if summary else {}
        rows.append(
            {
                "method": name,
                **mia.score_mia(df),
                "rte_seconds": s.get("rte_seconds"),
                "status": s.get("status", "ok"),
            }
        )
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def write_table2(table: pd.DataFrame, csv_path, md_path=None):
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False)
    if md_path:
        Path(md_path).write_text(to_markdown(table) + "\n")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub table (no `tabulate` dependency); fractions with 3 decimals, RTE in seconds."""

    def cell(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)
