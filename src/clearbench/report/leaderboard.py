"""results/leaderboard.csv: one row per evaluated model, the failed-retain rule, the ranking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = [
    "track", "split", "method", "l1", "modality",
    "real", "retain", "forget", "log10_forget_quality", "forget_quality_js",
    "forget_acc", "holdout_acc", "retain_acc", "u_lira", "u_mia",
    "rte_seconds", "status", "rank",
]  # fmt: skip
REFERENCES = ("original", "gold")
VISION_KEYS = ["forget_acc", "holdout_acc", "retain_acc", "u_lira", "u_mia"]
# per track: the retain column of the failed-retain rule, what ranks (lower is better; ties
# go to the higher retain), the columns shown and plotted
VIEWS = {
    "vision": dict(
        retain="retain_acc",
        rank_by=lambda rows: (rows["u_lira"].astype(float) - 0.5).abs(),  # 0.5 = unexposed
        shown=["method", "modality", *VISION_KEYS, "rte_seconds", "status", "rank"],
        bars=["retain_acc", "forget_acc", "holdout_acc", "u_lira"],
        ylabel="accuracy / attack accuracy (U-LIRA: 0.5 is ideal)",
    ),
    "text": dict(
        retain="retain",
        rank_by=lambda rows: rows["forget"],
        shown=[
            "method", "l1", "modality", "real", "retain", "forget",
            "log10_forget_quality", "forget_quality_js", "rte_seconds", "status", "rank",
        ],
        bars=["real", "retain", "forget"],
        ylabel="metric (higher real/retain, lower forget is better)",
    ),
}  # fmt: skip


def parse_model(name: str) -> tuple[str, object, str]:
    """'ga-l1-text' -> ('ga', True, 'text'); references have no l1/modality."""
    if name in REFERENCES:
        return name, None, None
    method, l1, modality = name.split("-")
    return method, l1 == "l1", modality


def row_of(metrics_path: str, model_dir: str) -> dict:
    track, split, name = Path(metrics_path).with_suffix("").parts[-3:]
    metrics = json.loads(Path(metrics_path).read_text())
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    method, l1, modality = parse_model(name)
    row = {"track": track, "split": split, "method": method, "l1": l1, "modality": modality}
    row |= {k: metrics.get(k) for k in COLUMNS if k in metrics}
    row["rte_seconds"] = meta.get("rte_seconds")
    row["status"] = meta.get("status", "ok")
    return row


def vision_row(summary_path: str, split: str) -> dict:
    """A vision model family's row from its summary (results/vision/<family>/summary.json)."""
    family = Path(summary_path).parent.name
    summary = json.loads(Path(summary_path).read_text())
    row = {"track": "vision", "split": split, "method": family, "l1": None}
    row["modality"] = None if family in REFERENCES else "visual"
    row |= {k: summary.get(k) for k in VISION_KEYS}
    row["rte_seconds"] = summary.get("rte_seconds")
    row["status"] = summary.get("status", "ok")
    return row


def view(track: str) -> dict:
    return VIEWS["vision" if track == "vision" else "text"]


def apply_rules(
    board: pd.DataFrame, retain_drop: float, vision_retain_drop: float | None = None
) -> pd.DataFrame:
    """failed-retain: retain below `retain_drop` x the original's (vision: retain accuracy
    below `vision_retain_drop` x the original's). Rank the rest by forget (vision: by U-LIRA,
    the closer to 0.5 the better)."""
    board = board.copy()
    board["rank"] = pd.array([pd.NA] * len(board), dtype="Int64")
    for (track, _), group in board.groupby(["track", "split"], sort=False):
        retain = view(track)["retain"]
        drop = retain_drop
        if track == "vision" and vision_retain_drop is not None:
            drop = vision_retain_drop
        original = group[group["method"] == "original"][retain]
        floor = (
            drop * float(original.iloc[0]) if len(original) and pd.notna(original.iloc[0]) else None
        )
        methods = group[~group["method"].isin(REFERENCES)]
        failed = methods.index[
            (methods["status"] == "ok")
            & (methods[retain].isna() | (methods[retain] < floor if floor is not None else False))
        ]
        board.loc[failed, "status"] = "failed-retain"
        ok = board.loc[methods.index]
        ok = ok[ok["status"] == "ok"].assign(rank_key=view(track)["rank_by"])
        ok = ok[ok["rank_key"].notna()]
        order = ok.sort_values(["rank_key", retain], ascending=[True, False]).index
        board.loc[order, "rank"] = np.arange(1, len(order) + 1)
    return board


def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = ["" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_split(group: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        m if l1 is None else f"{m}{'+l1' if l1 else ''}"
        for m, l1 in zip(group["method"], group["l1"], strict=True)
    ]
    track, split = group["track"].iloc[0], group["split"].iloc[0]
    bars = view(track)["bars"]
    x, width = np.arange(len(group)), 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(group)), 3.8))
    for i, key in enumerate(bars):
        offset = (i - (len(bars) - 1) / 2) * width
        ax.bar(x + offset, group[key].astype(float).fillna(0), width, label=key)
    if track == "vision":
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(view(track)["ylabel"])
    ax.set_title(f"{track} / {split}")
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_leaderboard(
    metrics: list[str],
    models: list[str],
    out: str,
    tables: str,
    plots: str,
    hp: dict,
    vision: list[str] = (),
    vision_split: str | None = None,
) -> dict:
    """metrics/models: per-sample-evaluated models (text, vlm); vision: model-family summaries."""
    if len(metrics) != len(models):
        raise ValueError("leaderboard: --metrics and --models must pair up one to one")
    if vision and not vision_split:
        raise ValueError("leaderboard: --vision needs --vision-split (the forget split of F)")
    rows = [row_of(m, d) for m, d in zip(metrics, models, strict=True)]
    rows += [vision_row(s, vision_split) for s in vision]
    board = pd.DataFrame(rows).reindex(columns=COLUMNS)
    board = apply_rules(board, hp["retain_drop"], hp.get("vision_retain_drop"))
    for folder in (tables, plots):
        Path(folder).mkdir(parents=True, exist_ok=True)
    for (track, split), group in board.groupby(["track", "split"], sort=False):
        shown = group[view(track)["shown"]]
        shown.to_csv(Path(tables) / f"{track}_{split}.csv", index=False)
        (Path(tables) / f"{track}_{split}.md").write_text(markdown_table(shown))
        plot_split(group, Path(plots) / f"{track}_{split}.png")
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    board.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return {"rows": len(board)}
