"""CLEAR text metrics, computed only from a per-sample eval table (DESIGN.md section 6).

The table has one row per (task, sample) with columns task, sample_id, gt_loss, para_loss,
perturbed_losses, generation, answer; every loss is a mean token NLL, so p(y|x) = exp(-loss)
is the length-normalised probability of the paper (section 4.3). An optional column
gt_minkpp (list of the Min-K%++ scores of the answer's tokens) and an optional task holdout
(authors no model trains on) give the membership attack (see `membership_scores`).

    python -m clearbench metrics EVAL.parquet [--gold GOLD.parquet] [--out FILE.json]
                                 [--mink-k 0.2] [--convention clearbench|clear-authors]
                                 [--bootstrap N [--bootstrap-seed S] [--level 0.95]]
                                 [--authors-out FILE.json]

--convention clear-authors recomputes real, retain, forget, forget quality and the per-task
scores the way the CLEAR authors' code does (metrics.resample); --bootstrap adds percentile
intervals <key>_lo/<key>_hi; --authors-out also writes the authors' convention (one read, one
ROUGE pass: the DAG's second set of tables).
"""

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from rouge_score import rouge_scorer
from scipy.spatial.distance import jensenshannon
from scipy.special import logsumexp
from scipy.stats import hmean, ks_2samp, rankdata

from clearbench.io import first_line, write_text_atomic
from clearbench.metrics import STATUS_KEY, add_bootstrap_arguments

COLUMNS = ("task", "sample_id", "gt_loss", "para_loss", "perturbed_losses", "generation", "answer")
# One dict covers both tracks: only the tasks present in a table are used.
DEFAULT_GROUPS = {
    "real": ("real_faces", "real_world", "real_authors", "world_facts"),
    "retain": ("retain", "retain_facerec"),
    "forget": ("forget", "forget_facerec"),
}
GROUP_METRICS = ("rouge_l", "probability", "truth_ratio")  # what a group's harmonic mean is over
FORGET_TASK = "forget"  # forget quality compares truth ratios on this task only
JS_BINS = 20
MIN_P_VALUE = 1e-300  # keeps log10 forget quality finite when the KS p-value underflows to 0
# Membership attack: forget rows (trained on, then unlearned) are the members, holdout rows
# (authors no model trains on) the non-members. Holdout is in no group.
MEMBER_TASK, NON_MEMBER_TASK = "forget", "holdout"
MINKPP_COLUMN = "gt_minkpp"
MINK_K = 0.2  # Min-K%++: the mean of the lowest 20% of the token scores (--mink-k)
ATTACKS = ("loss", "zlib", "minkpp")
# key of the PrivLeak of each attack: the headline `privleak` is the Min-K% family's, as MUSE's
PRIVLEAK_KEYS = {"minkpp": "privleak", "loss": "privleak_loss", "zlib": "privleak_zlib"}

_rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


class TableError(ValueError):
    """Bad input table; the message names the file or column."""


def _losses(cell) -> np.ndarray:
    # Parquet list cells come back as numpy arrays; a null cell as None.
    if cell is None or (np.ndim(cell) == 0 and pd.isna(cell)):
        return np.empty(0)
    return np.asarray(cell, dtype=float)


def _log_truth_ratio(df: pd.DataFrame) -> pd.Series:
    # log tr = L(para) - mean_j L(pert_j); in log space neither probability can under/overflow.
    para = df["para_loss"].astype(float).fillna(df["gt_loss"].astype(float))
    mean_pert = df["perturbed_losses"].map(_losses).map(lambda x: x.mean() if x.size else np.nan)
    return (para - mean_pert.astype(float)).rename("log_truth_ratio")


def per_sample_truth_ratio(df: pd.DataFrame) -> pd.Series:
    """tr = exp(-mean_j L(pert_j)) / exp(-L(para)) per row, indexed like df.

    That is the geometric mean of the wrong-answer probabilities over the paraphrase probability
    (TOFU's form). A null para_loss falls back to gt_loss (tasks without a paraphrase). Rows with
    no perturbed answers have no truth ratio: NaN.
    """
    return np.exp(_log_truth_ratio(df)).rename("truth_ratio")


def _probability(gt_loss: float, pert_losses: np.ndarray) -> float:
    # p(a) / (p(a) + sum_j p(pert_j)) as exp(log p(a) - logsumexp(log p of every option)), which
    # stays finite when all p underflow. With no perturbed answers it is 1.0 by this formula.
    log_p = np.concatenate([[-gt_loss], -pert_losses])
    return float(np.exp(-gt_loss - logsumexp(log_p)))


def _rouge_l_recall(answer, generation) -> float:
    answer, generation = (s if isinstance(s, str) else "" for s in (answer, generation))  # nulls
    return _rouge.score(target=answer, prediction=generation)["rougeL"].recall


def task_scores(rows: pd.DataFrame) -> dict:
    """rouge_l, probability, probability_raw, truth_ratio of one task's rows (see DESIGN.md).

    A task with options where some row has no perturbed losses is a broken table (that row's
    probability would be 1.0): TableError naming the task and sample.
    """
    gt = rows["gt_loss"].astype(float)
    pert = rows["perturbed_losses"].map(_losses)
    has_options = pert.map(len) > 0
    if has_options.any() and not has_options.all():
        bad = rows.loc[~has_options, "sample_id"].iloc[0]
        raise TableError(
            f"task {rows['task'].iloc[0]!r}, sample {bad!r}: no perturbed losses, though the task"
            " has options (probability would be 1.0)"
        )
    rouge = [_rouge_l_recall(a, g) for a, g in zip(rows["answer"], rows["generation"], strict=True)]
    prob = [_probability(g, p) for g, p in zip(gt, pert, strict=True)]
    tr = per_sample_truth_ratio(rows).dropna()
    return {
        "rouge_l": float(np.mean(rouge)),
        "probability": float(np.mean(prob)),
        "probability_raw": float(np.exp(-gt).mean()),
        # max(0, 1 - tr): 1 when the paraphrase clearly beats the wrong answers, 0 when it does not
        "truth_ratio": float(np.maximum(0.0, 1.0 - tr).mean()) if len(tr) else None,
    }


def _harmonic_mean(values: list) -> float | None:
    values = [v for v in values if v is not None]  # a task without options has no truth ratio
    if not values:
        return None
    if min(values) <= 0.0:  # the limit of hmean; scipy would warn on the division by zero
        return 0.0
    return float(hmean(values))


def log10_forget_quality(model_tr: np.ndarray, gold_tr: np.ndarray) -> float:
    """log10 of the two-sided KS two-sample p-value between the two truth-ratio samples."""
    p = ks_2samp(model_tr, gold_tr).pvalue
    return float(np.log10(max(p, MIN_P_VALUE)))


def forget_quality_js(model_tr: np.ndarray, gold_tr: np.ndarray) -> float:
    """1 - Jensen-Shannon distance (base 2, so in [0, 1]) between the two tr distributions.

    Both per-sample tr arrays are histogrammed on the same JS_BINS bins, equally spaced in log(tr)
    over the pooled range of both arrays; the result is
    1 - scipy.spatial.distance.jensenshannon(hist_model, hist_gold, base=2)
    (scipy normalises the counts). Identical samples give 1.0, disjoint histograms give 0.0.

    Why not the authors' version: their mm/calculate_metrics.py (somvy/multimodal_unlearning)
    calls jensenshannon(tr_unlearned, tr_gold) on the raw per-sample arrays, natural log: it treats
    the two vectors of ratios as probability vectors paired by sample index, so it needs equal
    lengths and the same sample order, and it measures how alike the two per-sample profiles are,
    not the two distributions (what the KS test compares). Log-spaced bins because tr is a ratio:
    linear bins over the pooled range put nearly every sample into the first bin once one tr is
    large, and in log space the value does not change if tr is inverted (TOFU/authors' convention
    is 1/tr), just as the KS p-value does not.
    """
    # Clip so a diverged model's 0 or inf ratios land in the edge bins instead of breaking the range
    log_model = np.log(np.clip(model_tr, MIN_P_VALUE, 1 / MIN_P_VALUE))
    log_gold = np.log(np.clip(gold_tr, MIN_P_VALUE, 1 / MIN_P_VALUE))
    edges = np.histogram_bin_edges(np.concatenate([log_model, log_gold]), bins=JS_BINS)
    hist_model = np.histogram(log_model, bins=edges)[0]
    hist_gold = np.histogram(log_gold, bins=edges)[0]
    distance = jensenshannon(hist_model, hist_gold, base=2)  # normalises the counts itself
    return float(np.clip(1.0 - distance, 0.0, 1.0))


def mink_mean(token_scores, k: float = MINK_K) -> float:
    """Mean of the lowest k fraction of the token scores (floor(k * n), at least one); NaN
    where there are none (an old table's null cell)."""
    values = np.sort(_losses(token_scores))
    if not values.size:
        return np.nan
    return float(values[: max(1, int(k * values.size))].mean())


def zlib_entropy(text) -> int:
    """Bytes of the zlib-compressed UTF-8 text (Carlini et al. 2021's zlib entropy)."""
    return len(zlib.compress((text if isinstance(text, str) else "").encode("utf-8")))


def membership_scores(rows: pd.DataFrame, k: float = MINK_K) -> pd.DataFrame:
    """Per row, one column per attack in ATTACKS; higher means 'member' for every one.

    loss: -gt_loss. zlib: -gt_loss / zlib entropy of the answer (Carlini et al.'s ratio of the
    LM loss to the zlib entropy). minkpp: the mean of the lowest k fraction of the gt_minkpp
    token scores (Zhang et al. 2024); NaN without the column or its cell.
    """
    gt = rows["gt_loss"].astype(float)
    entropy = np.array([zlib_entropy(a) for a in rows["answer"]], dtype=float)  # empty: float
    minkpp = (
        rows[MINKPP_COLUMN].map(lambda cell: mink_mean(cell, k))
        if MINKPP_COLUMN in rows
        else pd.Series(np.nan, index=rows.index)
    )
    return pd.DataFrame(
        {"loss": -gt, "zlib": -gt / entropy, "minkpp": minkpp},
        index=rows.index,
    )


def roc_auc(members, non_members) -> float | None:
    """P(score of a random member > score of a random non-member), ties counting 1/2: the
    Mann-Whitney U statistic over n_members * n_non_members. NaN scores are left out; None
    where a side has none."""
    members, non_members = (np.asarray(x, dtype=float) for x in (members, non_members))
    members, non_members = members[~np.isnan(members)], non_members[~np.isnan(non_members)]
    if not members.size or not non_members.size:
        return None
    ranks = rankdata(np.concatenate([members, non_members]))  # average ranks: ties count 1/2
    u = ranks[: members.size].sum() - members.size * (members.size + 1) / 2
    return float(u / (members.size * non_members.size))


def membership_aucs(df: pd.DataFrame, k: float = MINK_K) -> dict:
    """ROC AUC of each attack telling forget rows (members) from holdout rows (non-members)."""
    scores = membership_scores(df, k)
    members, non_members = df["task"] == MEMBER_TASK, df["task"] == NON_MEMBER_TASK
    return {a: roc_auc(scores.loc[members, a], scores.loc[non_members, a]) for a in ATTACKS}


def privleak(auc_model: float | None, auc_gold: float | None) -> float | None:
    """MUSE's PrivLeak, (AUC_model - AUC_gold) / AUC_gold, a fraction: > 0 the model still
    tells forget from holdout better than the gold (retrained) model does, < 0 worse."""
    if auc_model is None or auc_gold is None or auc_gold == 0:
        return None
    return (auc_model - auc_gold) / auc_gold


def check_table(df: pd.DataFrame, name: str = "table") -> None:
    """Raise TableError naming `name` and the column if df is not a per-sample eval table."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TableError(f"{name}: missing column(s) {', '.join(missing)}")
    if not pd.api.types.is_numeric_dtype(df["gt_loss"]) or df["gt_loss"].isna().any():
        raise TableError(f"{name}: column gt_loss must be numeric with no nulls")


def score_table(
    df: pd.DataFrame,
    gold: pd.DataFrame | None = None,
    groups: dict | None = None,
    mink_k: float = MINK_K,
) -> dict:
    """Flat JSON-ready dict: <task>/<metric> per task, one key per group, forget quality, and
    the membership attack: mia_<attack>_auc per attack, privleak[_<attack>] (see PRIVLEAK_KEYS).

    Values are python floats or None (never NaN). Groups default to DEFAULT_GROUPS; a group's
    value is the harmonic mean of rouge_l, probability and truth_ratio over its tasks present in
    df, None if none is. Forget-quality and PrivLeak keys are None without gold or without forget
    rows; the membership keys are None without holdout rows (or, for minkpp, gt_minkpp).
    """
    check_table(df, "table")
    scores = {}
    for task, rows in df.groupby("task", sort=True):
        for metric, value in task_scores(rows).items():
            scores[f"{task}/{metric}"] = value

    present = set(df["task"])
    for group, tasks in (DEFAULT_GROUPS if groups is None else groups).items():
        values = [scores[f"{t}/{m}"] for t in tasks if t in present for m in GROUP_METRICS]
        scores[group] = _harmonic_mean(values)

    scores["log10_forget_quality"] = scores["forget_quality_js"] = None
    if gold is not None:
        check_table(gold, "gold")
        model_tr = per_sample_truth_ratio(df[df["task"] == FORGET_TASK]).dropna().to_numpy()
        gold_tr = per_sample_truth_ratio(gold[gold["task"] == FORGET_TASK]).dropna().to_numpy()
        if len(model_tr) and len(gold_tr):
            scores["log10_forget_quality"] = log10_forget_quality(model_tr, gold_tr)
            scores["forget_quality_js"] = forget_quality_js(model_tr, gold_tr)

    aucs = membership_aucs(df, mink_k)
    gold_aucs = membership_aucs(gold, mink_k) if gold is not None else {}
    for attack in ATTACKS:
        scores[f"mia_{attack}_auc"] = aucs[attack]
        scores[PRIVLEAK_KEYS[attack]] = privleak(aucs[attack], gold_aucs.get(attack))

    return {k: None if v is None or not np.isfinite(v) else float(v) for k, v in scores.items()}


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        df = pd.read_parquet(path)
        status = (pq.read_schema(path).metadata or {}).get(STATUS_KEY, b"ok").decode()
    except Exception as e:  # pyarrow raises several types for a corrupt or non-Parquet file
        raise TableError(
            f"{path}: not a readable Parquet file ({type(e).__name__}: {first_line(e)})"
        ) from e
    check_table(df, str(path))
    if df.empty and status == "ok":  # a diverged model's table is empty by design, no other's
        raise TableError(f"{path}: no rows, though the model's status is ok")
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clearbench metrics", description="Score a per-sample eval table (CLEAR metrics)."
    )
    parser.add_argument("table", type=Path, help="per-sample eval table (Parquet)")
    parser.add_argument(
        "--gold", type=Path, help="the gold model's table; enables forget quality and PrivLeak"
    )
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument(
        "--mink-k",
        type=float,
        default=MINK_K,
        help="Min-K%%++: the fraction of lowest-scoring answer tokens averaged (default 0.2)",
    )
    parser.add_argument("--convention", choices=("clearbench", "clear-authors"),
                        default="clearbench", help="whose metric definitions (README "
                        "'Conventions'; default clearbench)")  # fmt: skip
    add_bootstrap_arguments(parser, "the samples, within each task")
    parser.add_argument("--authors-out", type=Path,
                        help="also write the scores in the clear-authors convention here")  # fmt: skip
    args = parser.parse_args(argv)
    if not 0 < args.mink_k <= 1:
        parser.error(f"--mink-k must be in (0, 1], got {args.mink_k}")

    try:
        df = read_table(args.table)
        gold = read_table(args.gold) if args.gold is not None else None
        outputs = [(args.out, args.convention)]
        if args.authors_out is not None:
            outputs.append((args.authors_out, "clear-authors"))
        try:
            ours = score_table(df, gold, mink_k=args.mink_k)
            scorer = None  # the per-row pass of the other convention and the bootstrap
            if args.bootstrap or any(c == "clear-authors" for _, c in outputs):
                from clearbench.metrics import resample

                scorer = resample.Scorer(df, gold)
        except TableError as e:  # a bad row: name the file it came from
            raise TableError(f"{args.table}: {e}") from None
        for out, convention in outputs:
            scores = dict(ours)
            if convention == "clear-authors":  # the authors' replace the keys they define
                scores |= resample.authors_scores(scorer)
            if args.bootstrap:
                scores |= resample.intervals(
                    scorer, args.bootstrap, args.bootstrap_seed, args.level, convention
                )
            text = json.dumps(scores, indent=2, sort_keys=True, allow_nan=False) + "\n"
            if out is None:
                sys.stdout.write(text)
            else:
                write_text_atomic(out, text)
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:  # e.g. a non-numeric loss inside a list cell
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: cannot score {args.table}: {first_line}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out or 'stdout'}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
