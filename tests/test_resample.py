"""Bootstrap intervals and the CLEAR authors' convention, from per-sample tables."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from clearbench.metrics import resample
from clearbench.metrics.text import score_table

LN2, LN4 = math.log(2), math.log(4)


def row(task, gt, para=None, pert=(), answer="the answer", generation="the answer"):
    return {"task": task, "gt_loss": float(gt), "para_loss": para,
            "perturbed_losses": [float(x) for x in pert], "generation": generation,
            "answer": answer}  # fmt: skip


def table(rows, ids=None):
    df = pd.DataFrame(rows)
    df.insert(1, "sample_id", ids or [f"{r['task']}-{i}" for i, r in enumerate(rows)])
    return df


def random_table(rng, n=30, shift=0.0):
    rows = []
    for task in ("forget", "retain", "real_authors", "world_facts"):
        for _ in range(n):
            gt = rng.uniform(0.1, 3.0) + (shift if task == "forget" else 0.0)
            words = rng.choice(["alpha", "beta", "gamma", "delta"], size=3).tolist()
            rows.append(row(task, gt, para=gt + rng.normal(0, 0.3),
                            pert=rng.uniform(0.5, 3.5, size=3).tolist(), answer="alpha beta gamma",
                            generation=" ".join(words)))  # fmt: skip
    return table(rows, [f"{r['task']}-{i % n}" for i, r in enumerate(rows)])


def test_the_point_estimate_of_our_convention_is_score_table():
    rng = np.random.default_rng(0)
    df, gold = random_table(rng), random_table(rng, shift=1.0)
    scorer = resample.Scorer(df, gold)
    point = {k: v[0] for k, v in scorer.score(scorer.identity(), "clearbench").items()}
    reference = score_table(df, gold)
    for key in ("real", "retain", "forget", "log10_forget_quality", "forget_quality_js"):
        assert point[key] == pytest.approx(reference[key], rel=1e-12, abs=1e-12), key


def test_the_authors_convention_by_hand():
    # forget: two samples, perturbed losses pooled over both: m = mean(ln2, ln4, ln4, ln4)
    forget = [row("forget", gt=LN2, para=LN2, pert=[LN2, LN4]),
              row("forget", gt=LN4, para=LN4, pert=[LN4, LN4])]  # fmt: skip
    retain = [row("retain", gt=LN2, para=LN2, pert=[LN4])]
    real = [row("real_authors", gt=LN2, pert=[LN4, LN4])]
    scores = resample.authors_scores(resample.Scorer(table(forget + retain + real), None))
    pooled = (LN2 + 3 * LN4) / 4
    tr = np.exp(pooled - np.array([LN2, LN4]))
    assert scores["forget/truth_ratio"] == pytest.approx(np.mean(np.minimum(tr, 1 / tr)))
    # retain: raw p(a) = 1/2; tr_a = exp(ln4 - ln2) = 2, max(0, 1 - 1/2) = 0.5
    assert scores["retain/probability"] == pytest.approx(0.5)
    assert scores["retain/truth_ratio"] == pytest.approx(0.5)
    # real_authors keeps the normalised probability: 0.5 / (0.5 + 0.25 + 0.25)
    assert scores["real_authors/probability"] == pytest.approx(0.5)
    assert scores["forget/probability"] == pytest.approx((0.5 + 0.25) / 2)  # raw
    assert scores["log10_forget_quality"] is None  # no gold


def test_the_authors_forget_quality_and_js_pair_samples_by_position():
    rng = np.random.default_rng(1)
    df, gold = random_table(rng, n=12), random_table(rng, n=12, shift=0.8)
    scores = resample.authors_scores(resample.Scorer(df, gold))

    def tr_a(t):
        f = t[t.task == "forget"]
        pooled = np.concatenate(f.perturbed_losses.to_numpy()).mean()
        return np.exp(pooled - f.para_loss.to_numpy())

    p = ks_2samp(tr_a(df), tr_a(gold)).pvalue
    assert scores["log10_forget_quality"] == pytest.approx(math.log10(p))
    assert scores["forget_quality_js"] == pytest.approx(jensenshannon(tr_a(df), tr_a(gold)))
    # pairs are samples, not row positions: the gold table's row order does not matter
    shuffled = gold.sample(frac=1.0, random_state=0)
    again = resample.authors_scores(resample.Scorer(df, shuffled))
    assert again["forget_quality_js"] == pytest.approx(scores["forget_quality_js"])


def test_intervals_contain_the_point_and_are_seeded():
    rng = np.random.default_rng(2)
    df, gold = random_table(rng), random_table(rng, shift=0.5)
    scorer = resample.Scorer(df, gold)
    a = resample.intervals(scorer, n=200, seed=3)
    assert a == resample.intervals(scorer, n=200, seed=3)
    assert a != resample.intervals(scorer, n=200, seed=4)
    point = score_table(df, gold)
    for key in resample.INTERVAL_KEYS:
        assert a[f"{key}_lo"] <= point[key] <= a[f"{key}_hi"], key
        assert a[f"{key}_lo"] < a[f"{key}_hi"], key


def test_interval_coverage_is_calibrated():
    """A Forget metric known by construction: ROUGE-L is 1 on a share q of the forget rows and
    0 elsewhere, probability and truth ratio are the same on every row, so the true Forget is
    the harmonic mean of (q, p, t). Over simulated tables the 90% interval must cover it in
    about 90% of the draws: neither too narrow nor too wide."""
    q, n_rows, draws = 0.6, 60, 150
    gt, pert = LN2, [LN4, LN4]  # probability 0.5; tr = exp(ln2 - ln4) = 0.5 -> 1 - tr = 0.5
    truth = 3 / (1 / q + 1 / 0.5 + 1 / 0.5)
    rng = np.random.default_rng(5)
    covered = 0
    for d in range(draws):
        hits = rng.random(n_rows) < q
        rows = [row("forget", gt, para=gt, pert=pert, answer="alpha beta",
                    generation="alpha beta" if h else "zeta") for h in hits]  # fmt: skip
        iv = resample.intervals(resample.Scorer(table(rows), None), n=300, seed=d, level=0.9)
        covered += iv["forget_lo"] <= truth <= iv["forget_hi"]
    assert 0.84 <= covered / draws <= 0.97  # measured: 0.90


def test_cli_writes_intervals_and_the_authors_convention(tmp_path):
    from clearbench.metrics.text import main

    rng = np.random.default_rng(7)
    paths = {}
    for name, shift in (("model", 0.0), ("gold", 0.7)):
        paths[name] = tmp_path / f"{name}.parquet"
        random_table(rng, n=15, shift=shift).to_parquet(paths[name])
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    argv = [str(paths["model"]), "--gold", str(paths["gold"]), "--out", str(ours),
            "--bootstrap", "100", "--authors-out", str(theirs)]  # fmt: skip
    assert main(argv) == 0
    a, b = (json.loads(p.read_text()) for p in (ours, theirs))
    assert set(a) == set(b)  # the same keys in both conventions
    model, gold = (pd.read_parquet(paths[k]) for k in ("model", "gold"))
    assert a["forget"] == score_table(model, gold)["forget"]
    assert b["forget"] == pytest.approx(
        resample.authors_scores(resample.Scorer(model, gold))["forget"]
    )
    assert a["forget"] != pytest.approx(b["forget"])
    assert a["forget_lo"] <= a["forget"] <= a["forget_hi"]
    assert b["log10_forget_quality_lo"] <= b["log10_forget_quality"] <= b["log10_forget_quality_hi"]
    with pytest.raises(SystemExit):  # argparse's usage error, one line
        main([*argv[:4], "--bootstrap", "-1"])
