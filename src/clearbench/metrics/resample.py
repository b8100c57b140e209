"""The group metrics and forget quality of a per-sample table as functions of which rows are
drawn: the CLEAR authors' convention (`clear-authors`) and bootstrap intervals in either.

One per-row pass (ROUGE-L, both probabilities, the losses) feeds every resample: a resample is
a matrix of row indices per task, one row per replicate, and the same matrix serves every metric
of the model (and, on the forget task, the gold model's rows of the same samples).

Conventions (README "Conventions"):
- `clearbench` (ours, TOFU's per-sample definitions; metrics.text is the reference code):
  probability p(a) / (p(a) + sum_j p(pert_j)) on every task; tr = exp(L(para) - mean_j
  L(pert_j)) per sample, entering aggregates as mean(max(0, 1 - tr)).
- `clear-authors` (somvy/multimodal_unlearning, mm/calculate_metrics.py): raw mean p(a) on the
  retain and forget QA tasks; the perturbed losses averaged over every sample and option of the
  task into one number m, tr_a = exp(m - L(para)) per sample (the inverse form); the forget tasks
  aggregate mean(min(tr_a, 1 / tr_a)), the others mean(max(0, 1 - 1 / tr_a)); forget quality is
  the KS test on tr_a; `forget_quality_js` is their `jensenshannon(tr_a_model, tr_a_gold)` on the
  raw per-sample arrays paired by position (natural log): a distance, 0 when identical.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from clearbench.metrics import text as m

CONVENTIONS = ("clearbench", "clear-authors")
RAW_PROBABILITY_TASKS = ("retain", "forget")  # the authors' eval_log*.json: raw p(a)
INTERVAL_KEYS = ("real", "retain", "forget", "log10_forget_quality")
GOLD = "gold forget"  # the key of the gold's forget rows in a resample


def row_arrays(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per row of one task: rouge_l, probability (normalised), probability_raw, para (the
    paraphrase loss, gt where none), pert_sum and pert_count (of the perturbed losses)."""
    gt = rows["gt_loss"].astype(float).to_numpy()
    pert = [m._losses(c) for c in rows["perturbed_losses"]]
    answers, generations = rows["answer"], rows["generation"]
    return {
        "sample_id": rows["sample_id"].astype(str).to_numpy(),
        "rouge_l": np.array(
            [m._rouge_l_recall(a, g) for a, g in zip(answers, generations, strict=True)]
        ),  # fmt: skip
        "probability": np.array([m._probability(g, p) for g, p in zip(gt, pert, strict=True)]),
        "probability_raw": np.exp(-gt),
        "para": rows["para_loss"].astype(float).fillna(rows["gt_loss"].astype(float)).to_numpy(),
        "pert_sum": np.array([p.sum() for p in pert]),
        "pert_count": np.array([p.size for p in pert], dtype=float),
    }


def truth_ratios(arr: dict, idx: np.ndarray, convention: str) -> np.ndarray:
    """(replicates, rows) per-sample truth ratio: ours tr, or the authors' tr_a (NaN: no options)."""
    count, para, pert = arr["pert_count"][idx], arr["para"][idx], arr["pert_sum"][idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        if convention == "clearbench":
            return np.exp(para - pert / count)
        pooled = pert.sum(1) / count.sum(1)  # one mean per replicate
        return np.where(count > 0, np.exp(pooled[:, None] - para), np.nan)


def task_values(task: str, arr: dict, idx: np.ndarray, convention: str) -> dict[str, np.ndarray]:
    """rouge_l, probability, truth_ratio (the aggregate form) of one task, one per replicate."""
    raw = convention == "clear-authors" and task in RAW_PROBABILITY_TASKS
    tr = truth_ratios(arr, idx, convention)
    with np.errstate(invalid="ignore", divide="ignore"):
        if convention == "clearbench":
            agg = np.maximum(0.0, 1.0 - tr)
        elif task in m.DEFAULT_GROUPS["forget"]:
            agg = np.minimum(tr, 1.0 / tr)
        else:
            agg = np.maximum(0.0, 1.0 - 1.0 / tr)
        truth = np.nansum(agg, 1) / (~np.isnan(agg)).sum(1)  # NaN: no options in the draw
    return {
        "rouge_l": arr["rouge_l"][idx].mean(1),
        "probability": arr["probability_raw" if raw else "probability"][idx].mean(1),
        "truth_ratio": truth,
    }


def harmonic_means(columns: list[np.ndarray]) -> np.ndarray:
    """Per replicate, the harmonic mean of the finite values (0 where one is <= 0), NaN if none:
    metrics.text._harmonic_mean, vectorised."""
    values = np.stack(columns, axis=1)
    finite = np.isfinite(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(finite, 1.0 / np.where(values > 0, values, 1.0), 0.0)
        out = finite.sum(1) / inv.sum(1)
    out[(finite & (values <= 0)).any(1)] = 0.0
    out[~finite.any(1)] = np.nan
    return out


def forget_quality(model_tr, gold_tr, convention: str, js: bool = True) -> tuple:
    """(log10 KS p-value, JS or None) of one pair of per-sample truth-ratio arrays (NaNs
    dropped)."""
    a, b = model_tr[~np.isnan(model_tr)], gold_tr[~np.isnan(gold_tr)]
    if not a.size or not b.size:
        return None, None
    ks = float(np.log10(max(ks_2samp(a, b).pvalue, m.MIN_P_VALUE)))
    if not js:
        return ks, None
    if convention == "clearbench":
        return ks, m.forget_quality_js(a, b)
    if a.size != b.size:  # the authors pair the arrays by position
        return ks, None
    return ks, float(jensenshannon(a, b))


def _aligned(model_ids: np.ndarray, gold_arr: dict) -> np.ndarray | None:
    """Positions of the model's forget samples in the gold's rows (None: other samples)."""
    where = {s: i for i, s in enumerate(gold_arr["sample_id"])}
    if len(where) != len(gold_arr["sample_id"]) or set(model_ids) != set(where):
        return None
    return np.array([where[s] for s in model_ids])


class Scorer:
    """The per-row pass of one model's table (and its gold's), scored under any resample."""

    def __init__(self, df: pd.DataFrame, gold: pd.DataFrame | None, groups: dict | None = None):
        m.check_table(df, "table")
        self.groups = m.DEFAULT_GROUPS if groups is None else groups
        self.tasks = {t: row_arrays(rows) for t, rows in df.groupby("task", sort=True)}
        self.gold = None
        if gold is not None:
            m.check_table(gold, "gold")
            rows = gold[gold["task"] == m.FORGET_TASK]
            self.gold = row_arrays(rows) if len(rows) else None

    def identity(self) -> dict[str, np.ndarray]:
        """The point estimate: every row once (GOLD: every gold forget row, in the model's
        sample order where both hold the same samples: the authors' JS pairs by position)."""
        idx = {t: np.arange(len(a["rouge_l"]))[None, :] for t, a in self.tasks.items()}
        if self.gold is not None:
            forget = self.tasks.get(m.FORGET_TASK)
            paired = None if forget is None else _aligned(forget["sample_id"], self.gold)
            order = np.arange(len(self.gold["rouge_l"])) if paired is None else paired
            idx[GOLD] = order[None, :]
        return idx

    def draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """n resamples: per task, rows drawn with replacement, as many as it has; the gold's
        forget rows follow the model's draw sample by sample (drawn on their own where the
        two tables hold different samples)."""
        idx = {t: rng.integers(0, len(a["rouge_l"]), (n, len(a["rouge_l"])))
               for t, a in self.tasks.items()}  # fmt: skip
        if self.gold is not None:
            forget = self.tasks.get(m.FORGET_TASK)
            paired = None if forget is None else _aligned(forget["sample_id"], self.gold)
            size = len(self.gold["rouge_l"])
            idx[GOLD] = rng.integers(0, size, (n, size)) if paired is None else (
                paired[idx[m.FORGET_TASK]]
            )  # fmt: skip
        return idx

    def score(
        self, idx: dict[str, np.ndarray], convention: str, js: bool = True
    ) -> dict[str, np.ndarray]:
        """real, retain, forget, log10_forget_quality, forget_quality_js (js) per replicate."""
        n = next(iter(idx.values())).shape[0]
        per_task = {t: task_values(t, self.tasks[t], idx[t], convention) for t in self.tasks}
        out = {}
        for group, tasks in self.groups.items():
            cols = [per_task[t][k] for t in tasks if t in per_task for k in m.GROUP_METRICS]
            out[group] = harmonic_means(cols) if cols else np.full(n, np.nan)
        out["log10_forget_quality"] = np.full(n, np.nan)
        out["forget_quality_js"] = np.full(n, np.nan)
        if self.gold is None or m.FORGET_TASK not in self.tasks:
            return out
        model_tr = truth_ratios(self.tasks[m.FORGET_TASK], idx[m.FORGET_TASK], convention)
        gold_tr = truth_ratios(self.gold, idx[GOLD], convention)
        for r in range(n):
            ks, distance = forget_quality(model_tr[r], gold_tr[r], convention, js)
            out["log10_forget_quality"][r] = np.nan if ks is None else ks
            out["forget_quality_js"][r] = np.nan if distance is None else distance
        return out


def _clean(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def authors_scores(scorer: Scorer) -> dict:
    """real, retain, forget, log10_forget_quality, forget_quality_js in the authors' convention,
    plus <task>/<metric> per task (rouge_l, probability, truth_ratio)."""
    idx = scorer.identity()
    out = {k: _clean(v[0]) for k, v in scorer.score(idx, "clear-authors").items()}
    for task, arr in scorer.tasks.items():
        for metric, v in task_values(task, arr, idx[task], "clear-authors").items():
            out[f"{task}/{metric}"] = _clean(v[0])
    return out


def intervals(
    scorer: Scorer, n: int, seed: int = 0, level: float = 0.95, convention: str = "clearbench"
) -> dict:
    """Percentile bootstrap intervals over samples (resampled within each task, one draw for
    every metric of the model): <key>_lo and <key>_hi for each of INTERVAL_KEYS (None where the
    metric is undefined in more than half of the replicates)."""
    draw = scorer.draw(n, np.random.default_rng(seed))
    values = scorer.score(draw, convention, js=False)
    tail = 100 * (1 - level) / 2
    out = {}
    for key in INTERVAL_KEYS:
        v = values[key][np.isfinite(values[key])]
        lo, hi = np.percentile(v, [tail, 100 - tail]) if v.size * 2 > n else (None, None)
        out[f"{key}_lo"], out[f"{key}_hi"] = _clean(lo), _clean(hi)
    return out
