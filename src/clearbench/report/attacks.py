"""The attacks' columns of the leaderboard, their table and plot per track (clearbench.attacks).

Language tracks: the Forget metric of each attacked model on the same forget samples as it is
(`forget_unattacked`), on reworded questions and unseen photos (`forget_probe`), quantized
(`forget_q8`, `forget_q4`) and relearned on a forget slice (`relearn_forget`) or on retain data
(`relearn_retain_forget`). Vision: U-LIRA after relearning (`relearn_u_lira`). A method whose
forgetting is real stays near the gold model under every attack; one that only hides what it
knows climbs back towards the original.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from clearbench.io import atomic_path

# the attack-metrics JSON keys (clearbench.attacks) -> leaderboard columns
LANGUAGE_KEYS = {
    "forget_none": "forget_unattacked",
    "forget_probe": "forget_probe",
    "forget_q8": "forget_q8",
    "forget_q4": "forget_q4",
    "relearn_forget": "relearn_forget",
    "relearn_retain_forget": "relearn_retain_forget",
}
ATTACK_COLUMNS = [*LANGUAGE_KEYS.values(), "relearn_u_lira"]
REFERENCES = ("original", "gold")


def language_attacks(paths: list[str]) -> pd.DataFrame:
    """One row per attacked model (results/attacks/<track>/<split>/<model>.json): its keys and
    the attack columns."""
    rows = []
    for path in paths:
        track, split, model = Path(path).with_suffix("").parts[-3:]
        values = json.loads(Path(path).read_text())
        rows.append({"track": track, "split": split, "model": model}
                    | {col: values.get(key) for key, col in LANGUAGE_KEYS.items()})  # fmt: skip
    df = pd.DataFrame(rows, columns=["track", "split", "model", *LANGUAGE_KEYS.values()])
    cols = list(LANGUAGE_KEYS.values())
    df[cols] = df[cols].astype(float)  # a kind the DAG did not run is null in every file: NaN
    return df


def relearn_attacks(paths: list[str]) -> dict[str, float]:
    """Vision family -> its U-LIRA after relearning (results/vision/<family>/relearn.json)."""
    return {Path(p).parent.name: json.loads(Path(p).read_text()).get("u_lira") for p in paths}


def model_name(row) -> str:
    """The model's name in the DAG's paths: original, gold or method-l1-modality."""
    if row["method"] in REFERENCES:
        return row["method"]
    return f"{row['method']}-{'l1' if row['l1'] else 'nol1'}-{row['modality']}"


def merge_attacks(board: pd.DataFrame, attacks: list[str], relearn: list[str]) -> pd.DataFrame:
    """The board with the attack columns filled in (missing where a model was not attacked)."""
    board = board.copy()
    found = language_attacks(attacks).set_index(["track", "split", "model"])
    language = board["track"].isin(["text", "vlm"])
    keys = [(r["track"], r["split"], model_name(r)) for _, r in board[language].iterrows()]
    for col in LANGUAGE_KEYS.values():
        board.loc[language, col] = [found.at[k, col] if k in found.index else np.nan for k in keys]
    vision = board["track"] == "vision"
    lira = relearn_attacks(relearn)
    board.loc[vision, "relearn_u_lira"] = [lira.get(m, np.nan) for m in board.loc[vision, "method"]]
    board[ATTACK_COLUMNS] = board[ATTACK_COLUMNS].astype(float)
    return board


def attack_tables(board: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """attacks_<track>_<split>: the attacked models with their plain and attacked numbers."""
    out = {}
    for (track, split), group in board.groupby(["track", "split"], sort=False):
        if track == "vision":
            cols = ["method", "u_lira", "relearn_u_lira", "forget_acc", "retain_acc", "status"]
            rows = group[group["relearn_u_lira"].notna()]
        elif track in ("text", "vlm"):
            cols = ["method", "l1", "modality", "forget", *LANGUAGE_KEYS.values(), "privleak",
                    "status", "rank"]  # fmt: skip
            rows = group[group["forget_unattacked"].notna()]
        else:
            continue
        if len(rows):
            out[f"attacks_{track}_{split}"] = rows[cols]
    return out


def plot_attacks(group: pd.DataFrame, path: Path) -> None:
    """Per attacked model, the forget metric (vision: U-LIRA) before and after each attack,
    with the original's and the gold model's unattacked values as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    track, split = group["track"].iloc[0], group["split"].iloc[0]
    if track == "vision":
        bars = {"u_lira": "unattacked", "relearn_u_lira": "relearned"}
        before, ylabel = "u_lira", "U-LIRA (0.5: unexposed)"
    else:
        bars = {col: col.removeprefix("forget_").removesuffix("_forget") or col
                for col in LANGUAGE_KEYS.values()}  # fmt: skip
        bars["forget_unattacked"] = "unattacked"
        before, ylabel = "forget_unattacked", "Forget metric (lower: more forgotten)"
    several = group["modality"].nunique() > 1
    labels = [
        m if m in REFERENCES else f"{m}{'+l1' if l1 else ''}{f' ({mod})' if several else ''}"
        for m, l1, mod in zip(group["method"], group["l1"], group["modality"], strict=True)
    ]
    x, width = np.arange(len(group)), 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(group)), 4.2))
    for i, (col, name) in enumerate(bars.items()):
        offset = (i - (len(bars) - 1) / 2) * width
        ax.bar(x + offset, group[col].astype(float).fillna(0), width, label=name)
    for ref, colour in (("original", "tab:red"), ("gold", "tab:green")):
        value = group.loc[group["method"] == ref, before]
        if len(value) and pd.notna(value.iloc[0]):
            ax.axhline(
                float(value.iloc[0]), color=colour, lw=1, ls="--", label=f"{ref} (unattacked)"
            )
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{track} / {split}: is it really forgotten?")
    ax.legend(ncol=4, fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
