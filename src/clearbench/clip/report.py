"""The clip track's table: zero-shot accuracies before/after unlearning, per method.

No torch here: `python -m clearbench clip table` only reads summary JSON files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from clearbench.io import atomic_path, write_text_atomic

ACCS = ("target_acc", "other_acc", "real_faces_acc")
CAPTION = (
    "CLIP track: zero-shot identification accuracy of eval photos by name, before (original) "
    "and after unlearning the target (forget-split) authors; other = the other authors, "
    "real_faces = famous people; fractions; rte_seconds = wall time of the unlearning call."
)


def read_summary(name: str, path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: no such summary file: {path}")
    try:
        s = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{name}: cannot read {path}: {err}") from None
    missing = [k for k in ACCS if not isinstance(s, dict) or k not in s]
    if missing:
        raise ValueError(f"{name}: {path} lacks {', '.join(missing)}")
    return s


def build_table(summaries: dict[str, dict]) -> pd.DataFrame:
    """Rows: original, gold, then every other entry in the given order."""
    if "original" not in summaries:
        raise ValueError("table needs an 'original' summary (the 'before' of every row)")
    before = summaries["original"]
    order = ["original"] + (["gold"] if "gold" in summaries else [])
    order += [n for n in summaries if n not in ("original", "gold")]
    rows = []
    for name in order:
        s = summaries[name]
        row = {"model": name}
        for k in ACCS:
            row[f"{k}_before"], row[f"{k}_after"] = before[k], s[k]
        row["rte_seconds"] = s.get("rte_seconds")
        row["status"] = s.get("status", "ok")
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def to_markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([f"*{CAPTION}*", "", head, rule, *body]) + "\n"


def plot(df: pd.DataFrame, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(df))
    width = 0.8 / len(ACCS)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(df) + 2), 3.5))
    for i, k in enumerate(ACCS):
        values = pd.to_numeric(df[f"{k}_after"], errors="coerce").fillna(0)
        ax.bar(x + (i - 1) * width, values, width, label=k.removesuffix("_acc"))
    ax.set_xticks(x, df["model"], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("zero-shot accuracy")
    ax.set_title("CLIP: accuracy after unlearning the target authors")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_table(summary_args: list[str], out_csv, out_md, out_png) -> dict:
    summaries = {}
    for item in summary_args:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--summaries expects NAME=PATH, got '{item}'")
        summaries[name] = read_summary(name, path)
    df = build_table(summaries)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    write_text_atomic(out_md, to_markdown(df))
    plot(df, out_png)
    return {"rows": len(df), "csv": str(out_csv)}


def add_table_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--summaries", nargs="+", required=True, help="NAME=summary.json ...")
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-png", required=True)
    s.add_argument("--hp", help="accepted for symmetry with the other steps; unused")
    s.add_argument("--threads", type=int, default=1, help="unused")


def main(argv=None) -> int:
    """`clip table ...` (argv starts with 'table')."""
    p = argparse.ArgumentParser(prog="clearbench clip")
    sub = p.add_subparsers(dest="step", required=True)
    add_table_args(sub.add_parser("table", help="summaries -> CSV, Markdown, PNG"))
    a = p.parse_args(argv)
    print(json.dumps(write_table(a.summaries, a.out_csv, a.out_md, a.out_png)))
    return 0
