"""Vision-track report pieces: Figure 6 (phi of forget vs holdout per method) and Table 2.

Both read only scores tables (the section 8 contract) plus the per-method status/RTE summary,
so results of external models can be drawn and tabulated the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from clearbench.io import atomic_path, write_text_atomic
from clearbench.metrics import add_bootstrap_arguments
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
    "diverged_models",
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def surviving(scores: pd.DataFrame) -> tuple[pd.DataFrame, set]:
    """The rows of the models that have a finite phi, and the ids of those that have none (a
    model that diverged after training, or an external table's NaN model): scored as diverged,
    not as a model that identifies nothing."""
    finite = np.isfinite(scores["phi"].to_numpy(dtype=np.float64))
    alive = set(scores.loc[finite, "model"])
    dead = set(scores["model"]) - alive
    return (scores[scores["model"].isin(alive)] if dead else scores), dead


def table2(scores: dict, summary: dict | None = None) -> pd.DataFrame:
    """Forget / holdout / retain accuracy, U-LIRA, U-MIA, RTE, status and the number of
    diverged models per method (the numbers are those of the models that survived)."""
    rows = []
    for name, df in scores.items():
        s = dict(summary.get(name, {})) if summary else {}
        rows.append(
            {
                "method": name,
                **mia.score_mia(surviving(df)[0]),
                "rte_seconds": s.get("rte_seconds"),
                "status": s.get("status", "ok"),
                "diverged_models": s.get("n_diverged", len(surviving(df)[1])),
            }
        )
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def write_table2(table: pd.DataFrame, csv_path, md_path=None):
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    if md_path:
        write_text_atomic(md_path, to_markdown(table) + "\n")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub table (no `tabulate` dependency); fractions with 3 decimals, RTE in seconds."""

    def cell(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def summarize_family(metas: list[dict], scores: pd.DataFrame) -> dict:
    """One model family's summary from its chunks' metas (protocol.chunk_meta) and its scores:
    the mia numbers, status, RTE (the chunks' times add up), how many models diverged.

    A diverged model has no rows in `scores` (protocol.score_models), so the numbers are those
    of the models that survived: one diverged model out of M does not drop the method. The
    family is `diverged` only when divergence leaves nothing to score: every model diverged,
    or no target or no shadow model is left for U-LIRA."""
    status = [s for m in metas for s in m["status"]]
    ids = [k for m in metas for k in m.get("model_ids", [None] * len(m["status"]))]
    scores, nan_models = surviving(scores)
    dead = {k for k, s in zip(ids, status, strict=True) if s != "ok"}
    n_div = sum(s != "ok" for s in status) + len(nan_models - dead)
    rte = [m.get("rte_seconds") for m in metas]
    numbers = mia.score_mia(scores)
    lost = n_div and (n_div >= len(status) or numbers["u_lira"] is None)
    return dict(
        **numbers,
        rte_seconds=sum(rte) if all(t is not None for t in rte) else None,
        status="diverged" if lost else "ok",
        n_models=len(status),
        n_diverged=n_div,
    )


def with_statistics(result: dict, scores: pd.DataFrame, bootstrap: dict | None) -> dict:
    """The summary plus its bootstrap intervals (bootstrap: {n, seed, level}; n 0: none) and
    `authors`: the mia numbers (and intervals) with phi as the CLEAR authors' code computes it."""
    scores, _ = surviving(scores)
    n = int((bootstrap or {}).get("n", 0))
    if n:
        result |= mia.intervals(scores, n, bootstrap["seed"], bootstrap["level"])
    theirs = mia.in_convention(scores, "clear-authors")
    result["authors"] = mia.score_mia(theirs) | (
        mia.intervals(theirs, n, bootstrap["seed"], bootstrap["level"]) if n else {}
    )
    return result


def collect(
    scores: list[str], metas: list[str], out: str, summary: str, bootstrap: dict | None = None
) -> dict:
    """Chunk scores + metas of one family -> its scores.parquet and summary.json (with the
    statistics of with_statistics)."""
    if len(scores) != len(metas):
        raise ValueError("collect: --scores and --meta must pair up one to one")
    frames = [mia.read_scores(p) for p in scores]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=mia.COLUMNS)
    metas = [json.loads(Path(m).read_text()) for m in metas]
    if all(s == "ok" for m in metas for s in m["status"]):  # else a role may be gone by design
        try:
            mia.check_roles(table)
        except ValueError as e:
            raise ValueError(f"{', '.join(map(str, scores))}: {e}") from None
    result = with_statistics(summarize_family(metas, table), table, bootstrap)
    mia.write_parquet_atomic(table, out)
    mia.write_json_atomic(summary, result)
    return result


def main(argv=None):
    """`python -m clearbench vision collect|report`: the torch-free steps of the vision track."""
    p = argparse.ArgumentParser(prog="clearbench vision", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("collect", help="chunk scores + metas -> family scores.parquet + summary")
    s.add_argument("--scores", nargs="+", required=True, help="chunk scores tables")
    s.add_argument("--meta", nargs="+", required=True, help="chunk meta JSONs, same order")
    s.add_argument("--out", required=True, help="the family's scores.parquet")
    s.add_argument("--summary", required=True, help="the family's summary JSON")
    add_bootstrap_arguments(s, "the targets' (model, example) pairs")
    s = sub.add_parser("report", help="Figure 6 PNG + Table 2 CSV/Markdown from scores tables")
    s.add_argument("--scores", nargs="+", required=True, metavar="NAME=SCORES.parquet")
    s.add_argument("--metrics", nargs="*", default=[], metavar="NAME=SUMMARY.json",
                   help="family summaries (status, rte_seconds) per name")  # fmt: skip
    s.add_argument("--figure", required=True)
    s.add_argument("--out", required=True, help="Table 2 CSV (Markdown beside it, .md)")
    args = p.parse_args(argv)
    if args.step == "collect":
        boot = dict(n=args.bootstrap, seed=args.bootstrap_seed, level=args.level)
        print(json.dumps(collect(args.scores, args.meta, args.out, args.summary, boot)))
        return 0
    pairs = lambda items: dict(item.split("=", 1) for item in items)  # noqa: E731
    scores = {k: mia.read_scores(v) for k, v in pairs(args.scores).items()}
    summary = {k: json.loads(Path(v).read_text()) for k, v in pairs(args.metrics).items()}
    figure6(scores, args.figure)
    table = table2(scores, summary)
    out = Path(args.out)
    write_table2(table, out, out.with_suffix(".md"))
    print(to_markdown(table), file=sys.stderr)
    return 0
