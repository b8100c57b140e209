"""results/leaderboard.csv: one row per evaluated model, the failed-retain rule, the ranking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from clearbench.io import atomic_path, write_text_atomic
from clearbench.report.attacks import ATTACK_COLUMNS, attack_tables, merge_attacks, plot_attacks
from clearbench.report.uncertainty import (
    INTERVAL_COLUMNS,
    plot_intervals,
    tie_with_next,
    with_intervals,
)

COLUMNS = [
    "track", "split", "method", "l1", "modality",
    "real", "retain", "forget", "log10_forget_quality", "forget_quality_js",
    "forget_acc", "holdout_acc", "retain_acc", "u_lira", "u_mia", "real_acc", "privleak",
    *ATTACK_COLUMNS, "rte_seconds", "status", "diverged_models", "rank", "rank_paper",
    "tie_with_next", *INTERVAL_COLUMNS,
]  # fmt: skip
REFERENCES = ("original", "gold")
LANGUAGE_TRACKS = ("text", "vlm")
VISION_KEYS = ["forget_acc", "holdout_acc", "retain_acc", "u_lira", "u_mia"]
LANGUAGE_SHOWN = with_intervals([
    "method", "l1", "modality", "real", "retain", "forget",
    "log10_forget_quality", "forget_quality_js", "rte_seconds", "status", "rank", "rank_paper",
])  # fmt: skip


# per track: the columns of the collapse rules, the sort keys of `rank` and of the paper's
# `rank_paper` (ascending; later keys break ties), the columns shown and plotted
def lira_gap(rows, gold):
    """Vision: |U-LIRA - 0.5| (0.5 = unexposed), ties to the higher retain accuracy."""
    return [(rows["u_lira"] - 0.5).abs(), -rows["retain_acc"]]


VIEWS = {
    "vision": dict(
        retain="retain_acc",
        real=None,
        rank=lira_gap,
        rank_paper=lira_gap,
        shown=with_intervals(
            [
                "method",
                "modality",
                *VISION_KEYS,
                "rte_seconds",
                "status",
                "diverged_models",
                "rank",
            ]
        ),  # fmt: skip
        bars=["retain_acc", "forget_acc", "holdout_acc", "u_lira"],
        ylabel="accuracy / attack accuracy (U-LIRA: 0.5 is ideal)",
    ),
    # zero-shot identification by name: forget_acc on the forget authors' photos, retain_acc on
    # the other authors', real_acc on the famous people's (clearbench.clip)
    "clip": dict(
        retain="retain_acc",
        real="real_acc",
        rank=lambda rows, gold: [
            (rows["forget_acc"] - gold["forget_acc"]).abs(),
            -rows["retain_acc"],
        ],
        rank_paper=lambda rows, gold: [rows["forget_acc"], -rows["retain_acc"]],
        shown=[
            "method",
            "forget_acc",
            "retain_acc",
            "real_acc",
            "rte_seconds",
            "status",
            "rank",
            "rank_paper",
        ],  # fmt: skip
        bars=["retain_acc", "real_acc", "forget_acc"],
        ylabel="zero-shot identification accuracy",
    ),
    "text": dict(
        retain="retain",
        real="real",
        # closeness to the gold model: forget quality first, then the gap to gold's forget metric
        rank=lambda rows, gold: [
            -rows["log10_forget_quality"],
            (rows["forget"] - gold["forget"]).abs(),
        ],
        # the paper's reading: the lowest forget metric wins (it rewards over-forgetting)
        rank_paper=lambda rows, gold: [rows["forget"], -rows["retain"]],
        shown=LANGUAGE_SHOWN,
        bars=["real", "retain", "forget"],
        ylabel="metric (higher real/retain, lower forget is better)",
    ),
}
TABLE_COLUMNS = with_intervals(["split", "method", "l1", "modality", "real", "retain", "forget",
                 "log10_forget_quality", "forget_quality_js", "rte_seconds", "status"])  # fmt: skip


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
    """A vision model family's row from its summary (results/vision/<family>/summary.json):
    its numbers are those of the models that survived, `diverged_models` counts the others."""
    family = Path(summary_path).parent.name
    summary = json.loads(Path(summary_path).read_text())
    row = {"track": "vision", "split": split, "method": family, "l1": None}
    row["modality"] = None if family in REFERENCES else "visual"
    row |= {k: summary.get(k) for k in VISION_KEYS + INTERVAL_COLUMNS}
    row["rte_seconds"] = summary.get("rte_seconds")
    row["status"] = summary.get("status", "ok")
    row["diverged_models"] = summary.get("n_diverged")
    return row


def clip_row(summary_path: str) -> dict:
    """A clip-track model's row from its summary (results/clip/<split>/<model>.json)."""
    path = Path(summary_path)
    summary = json.loads(path.read_text())
    row = {"track": "clip", "split": path.parent.name, "method": path.stem, "l1": None}
    row["modality"] = None if path.stem in REFERENCES else "visual"
    row |= {"forget_acc": summary.get("target_acc"), "retain_acc": summary.get("other_acc"),
            "real_acc": summary.get("real_faces_acc")}  # fmt: skip
    row["rte_seconds"] = summary.get("rte_seconds")
    row["status"] = summary.get("status", "ok")
    return row


def view(track: str) -> dict:
    return VIEWS[track if track in VIEWS else "text"]


def collapsed(rows: pd.DataFrame, column: str, original: pd.DataFrame, drop: float) -> pd.Index:
    """Rows whose `column` is missing or below `drop` x the original model's."""
    base = original[column].iloc[0] if len(original) else None
    if base is None or pd.isna(base):
        return rows.index[rows[column].isna()]
    return rows.index[rows[column].isna() | (rows[column].astype(float) < drop * float(base))]


def ranks(keys: list[pd.Series]) -> pd.Series:
    """1, 2, ... by the sort keys (ascending); rows whose first key is missing get no rank."""
    table = pd.concat(keys, axis=1, keys=range(len(keys))).astype(float)
    table = table[table[0].notna()]
    order = table.sort_values(list(table.columns), kind="stable").index
    return pd.Series(np.arange(1, len(order) + 1), index=order)


def apply_rules(board: pd.DataFrame, hp: dict) -> pd.DataFrame:
    """Per track and split (DESIGN section 6):
    - `status_paper` (the tables' gray-out, the paper's rule): failed-retain where the retain
      metric is below `retain_drop` x the original's (vision: retain accuracy below
      `vision_retain_drop` x the original's);
    - `status` (the leaderboard's): also failed-real where the Real metric is below `real_drop` x
      the original's, so breaking the model cannot win;
    - `rank` among `ok` methods by closeness to the gold model (log10 forget quality, then
      |forget - gold forget|; vision: |U-LIRA - 0.5|), `rank_paper` among the paper's `ok`
      methods by the lowest forget metric."""
    board = board.copy()
    for col in ("rank", "rank_paper"):
        board[col] = pd.array([pd.NA] * len(board), dtype="Int64")
    board["status_paper"] = board["status"]
    for (track, _), group in board.groupby(["track", "split"], sort=False):
        v = view(track)
        drop = {
            "vision": hp.get("vision_retain_drop", hp["retain_drop"]),
            "clip": hp.get("clip_drop", hp["retain_drop"]),
        }.get(track, hp["retain_drop"])
        real_drop = hp.get("clip_drop", 0.0) if track == "clip" else hp.get("real_drop", 0.0)
        original = group[group["method"] == "original"]
        gold = group[group["method"] == "gold"]
        gold = gold.iloc[0] if len(gold) else pd.Series(dtype=float, index=group.columns)
        methods = group[~group["method"].isin(REFERENCES) & (group["status"] == "ok")]
        failed_retain = collapsed(methods, v["retain"], original, drop)
        board.loc[failed_retain, ["status", "status_paper"]] = "failed-retain"
        if v["real"]:
            rest = methods.drop(failed_retain)
            board.loc[collapsed(rest, v["real"], original, real_drop), "status"] = "failed-real"
        for col, status in (("rank", "status"), ("rank_paper", "status_paper")):
            rows = board.loc[methods.index]
            rows = rows[rows[status] == "ok"]
            if len(rows):
                order = ranks([k.astype(float) for k in v[col](rows, gold)])
                board.loc[order.index, col] = order.to_numpy()
    return board


def markdown_table(df: pd.DataFrame) -> str:
    """A Markdown table; a column with <col>_lo and <col>_hi beside it shows "value [lo, hi]"."""
    bounds = {f"{c}_{side}" for c in df.columns for side in ("lo", "hi")
              if f"{c}_lo" in df.columns and f"{c}_hi" in df.columns}  # fmt: skip
    cols = [c for c in df.columns if c not in bounds]

    def cell(v) -> str:
        return "" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            text = cell(row[c])
            if f"{c}_lo" in bounds and text and not pd.isna(row[f"{c}_lo"]):
                text += f" [{cell(row[f'{c}_lo'])}, {cell(row[f'{c}_hi'])}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_split(group: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = group["modality"].nunique() > 1  # name the modality where it varies (vlm)
    labels = [
        m if l1 is None else f"{m}{'+l1' if l1 else ''}{f' ({mod})' if several else ''}"
        for m, l1, mod in zip(group["method"], group["l1"], group["modality"], strict=True)
    ]
    track, split = group["track"].iloc[0], group["split"].iloc[0]
    bars = view(track)["bars"]
    x, width = np.arange(len(group)), 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(group)), 4.2))
    for i, key in enumerate(bars):
        offset = (i - (len(bars) - 1) / 2) * width
        ax.bar(x + offset, group[key].astype(float).fillna(0), width, label=key)
    if track == "vision":
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    if track == "clip":  # the retrained model's accuracy on the forget authors: the aim
        gold = group.loc[group["method"] == "gold", "forget_acc"]
        if len(gold):
            ax.axhline(
                float(gold.iloc[0]), color="tab:green", lw=0.8, ls="--", label="gold forget_acc"
            )
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(view(track)["ylabel"])
    ax.set_title(f"{track} / {split}")
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def paper_tables(board: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's Tables 1, 3 and 4, each with the Original and Gold rows, `status` being the
    paper's gray-out (retain collapse only):
    table1_text      text track, every method without and with l1, per split
    table3_modality  vlm, without l1: methods run in more than one forget modality x modality
    table4_l1        vlm, modality `both`: every method without and with l1 (only where the
                     DAG ran l1 runs: `default` does not)"""
    rows = board.assign(status=board["status_paper"])
    text, vlm = rows[rows["track"] == "text"], rows[rows["track"] == "vlm"]
    refs = vlm[vlm["method"].isin(REFERENCES)]
    runs = vlm.drop(refs.index)
    no_l1 = runs[runs["l1"] == False]  # noqa: E712 (object column of True/False/None)
    several = no_l1.groupby(["split", "method"])["modality"].transform("nunique") > 1
    tables = {
        "table1_text": text,
        "table3_modality": pd.concat([refs, no_l1[several]]),
        "table4_l1": pd.concat([refs, runs[runs["modality"] == "both"]])
        if (runs["l1"] == True).any()  # noqa: E712
        else refs.iloc[:0],
    }
    return {
        name: t.sort_values("split", kind="stable")[TABLE_COLUMNS]
        for name, t in tables.items()
        if len(t)
    }


def rte_table(board: pd.DataFrame) -> pd.DataFrame:
    """Per track and split: how much faster each training-free method is than the fastest
    method that trains on the same forget set (the same modality where the track has runs in
    it: Unlink on the vlm reads photos, so it is compared with the visual runs), both timed in
    the same run (RTE = unlearning wall time only)."""
    from clearbench.unlearn.registry import DECLARED
    from clearbench.vision.registry import EDITS

    edits = set(EDITS) | {name for name, d in DECLARED.items() if d.edit} | {"unlink"}
    runs = board[~board["method"].isin(REFERENCES) & board["rte_seconds"].notna()]
    rows = []
    for (track, split), group in runs.groupby(["track", "split"], sort=False):
        trained = group[~group["method"].isin(edits)]
        for _, edit in group[group["method"].isin(edits)].iterrows():
            same = trained[trained["modality"] == edit["modality"]]
            pool = same if len(same) else trained
            if not len(pool):
                continue
            fastest = pool.loc[pool["rte_seconds"].astype(float).idxmin()]
            rows.append({
                "track": track, "split": split, "method": edit["method"],
                "rte_seconds": edit["rte_seconds"], "fastest_trained": fastest["method"],
                "fastest_trained_rte_seconds": fastest["rte_seconds"],
                "speedup": float(fastest["rte_seconds"]) / max(float(edit["rte_seconds"]), 1e-9),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=["track", "split", "method", "rte_seconds",
                                       "fastest_trained", "fastest_trained_rte_seconds", "speedup"])  # fmt: skip


def plot_losses(models: list[str], track: str, split: str, path: Path) -> bool:
    """Loss per step of every unlearning run of a track and split, by term (the losses.csv
    each run keeps next to its adapter): why a method collapsed, at a glance."""
    runs = [  # results/models/<track>/unlearn/<method>/<split>/<l1>-<modality>
        (Path(m).parts[-3], Path(m).parts[-1], Path(m) / "losses.csv")
        for m in models
        if Path(m).parts[-5:-3] == (track, "unlearn") and Path(m).parts[-2] == split
    ]
    runs = [(f"{method} {tag}", pd.read_csv(f)) for method, tag, f in runs if f.exists()]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(6, len(runs))
    n_rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(2.6 * cols, 2.1 * n_rows), squeeze=False)
    terms = list(dict.fromkeys(t for _, df in runs for t in df.columns.drop(["step", "loss"])))
    colour = {t: f"C{i % 10}" for i, t in enumerate(terms)}  # one colour per term in every panel
    for ax, (name, df) in zip(axes.flat, runs, strict=False):
        for term in df.columns.drop(["step", "loss"]):
            ax.plot(df["step"], df[term], lw=1, label=term, color=colour[term])
        if len(df.columns) > 3:
            ax.plot(df["step"], df["loss"], "k--", lw=0.8, label="total")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, loc="best")
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    fig.suptitle(f"{track} / {split}: unlearning loss per step, by term", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return True


def write_table(df: pd.DataFrame, folder: str, name: str) -> None:
    with atomic_path(Path(folder) / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_text_atomic(Path(folder) / f"{name}.md", markdown_table(df))


def typed(board: pd.DataFrame) -> pd.DataFrame:
    numeric = ["real", "retain", "forget", "log10_forget_quality", "forget_quality_js",
               *VISION_KEYS, "real_acc", "privleak", "rte_seconds", *INTERVAL_COLUMNS]  # fmt: skip
    board[numeric] = board[numeric].astype(float)
    board["diverged_models"] = pd.to_numeric(board["diverged_models"]).astype("Int64")
    return board


def authors_tables(
    metrics: list[str],
    models: list[str],
    hp: dict,
    folder: Path,
    vision: list[str] = (),
    vision_split: str | None = None,
) -> None:
    """The per-track and paper tables again, every number in the CLEAR authors' convention
    (metrics files written with --authors-out; vision summaries' `authors` part)."""
    rows = [row_of(m, d) for m, d in zip(metrics, models, strict=True)]
    for path in vision:
        row = vision_row(path, vision_split)
        authors = json.loads(Path(path).read_text()).get("authors", {})
        rows.append(row | {k: authors.get(k) for k in VISION_KEYS + INTERVAL_COLUMNS})
    board = apply_rules(typed(pd.DataFrame(rows).reindex(columns=COLUMNS)), hp)
    board["tie_with_next"] = tie_with_next(board)
    folder.mkdir(parents=True, exist_ok=True)
    for (track, split), group in board.groupby(["track", "split"], sort=False):
        write_table(group[view(track)["shown"]], folder, f"{track}_{split}")
    for name, table in paper_tables(board).items():
        write_table(table, folder, name)


def build_leaderboard(
    metrics: list[str],
    models: list[str],
    out: str,
    tables: str,
    plots: str,
    hp: dict,
    vision: list[str] = (),
    vision_split: str | None = None,
    clip: list[str] = (),
    attacks: list[str] = (),
    relearn: list[str] = (),
    authors: list[str] = (),
) -> dict:
    """metrics/models: per-sample-evaluated models (text, vlm); vision: model-family summaries;
    clip: the clip track's model summaries; attacks: the language tracks' attack metrics,
    relearn: the vision families' U-LIRA after relearning (clearbench.report.attacks);
    authors: the metrics files in the CLEAR authors' convention, paired with `metrics` (the
    tables again in <tables>/authors)."""
    if len(metrics) != len(models):
        raise ValueError("leaderboard: --metrics and --models must pair up one to one")
    if authors and len(authors) != len(metrics):
        raise ValueError("leaderboard: --authors and --metrics must pair up one to one")
    if vision and not vision_split:
        raise ValueError("leaderboard: --vision needs --vision-split (the forget split of F)")
    rows = [row_of(m, d) for m, d in zip(metrics, models, strict=True)]
    rows += [vision_row(s, vision_split) for s in vision]
    rows += [clip_row(s) for s in clip]
    board = pd.DataFrame(rows).reindex(columns=COLUMNS)
    board = merge_attacks(apply_rules(typed(board), hp), list(attacks), list(relearn))
    board["tie_with_next"] = tie_with_next(board)
    for folder in (tables, plots):
        Path(folder).mkdir(parents=True, exist_ok=True)
    for (track, split), group in board.groupby(["track", "split"], sort=False):
        write_table(group[view(track)["shown"]], tables, f"{track}_{split}")
        plot_split(group, Path(plots) / f"{track}_{split}.png")
        plot_intervals(group, Path(plots) / f"intervals_{track}_{split}.png")
        if track in LANGUAGE_TRACKS:
            plot_losses(models, track, split, Path(plots) / f"losses_{track}_{split}.png")
    for name, table in paper_tables(board).items():
        write_table(table, tables, name)
    for name, table in attack_tables(board).items():
        write_table(table, tables, name)
        plot_attacks(board.loc[table.index], Path(plots) / f"{name}.png")
    if authors:
        authors_tables(list(authors), models, hp, Path(tables) / "authors", vision, vision_split)
    rte = rte_table(board)
    if len(rte):
        write_table(rte, tables, "rte_training_free")
    with atomic_path(out) as tmp:
        board[COLUMNS].to_csv(tmp, index=False)
    return {"rows": len(board)}
