"""Text metrics on tiny hand-built tables; every expected value is worked out by hand below."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from clearbench.metrics.text import (
    forget_quality_js,
    log10_forget_quality,
    main,
    per_sample_truth_ratio,
    score_table,
)

# A warning (division by zero, log of 0, ...) in the metrics is a bug here.
pytestmark = pytest.mark.filterwarnings("error")

LN2, LN4 = math.log(2), math.log(4)  # losses whose probabilities are 1/2 and 1/4
TEXT_TASKS = ("forget", "retain", "real_authors", "world_facts")


def row(task, gt, para=None, pert=(), answer="the answer", generation="the answer"):
    return {
        "task": task,
        "gt_loss": float(gt),
        "para_loss": para,
        "perturbed_losses": [float(x) for x in pert],
        "generation": generation,
        "answer": answer,
    }


def table(*rows):
    df = pd.DataFrame(rows)
    df.insert(1, "sample_id", [f"{r['task']}-{i}" for i, r in enumerate(rows)])
    return df


def group_values(scores, tasks):
    return [scores[f"{t}/{m}"] for t in tasks for m in ("rouge_l", "probability", "truth_ratio")]


def test_probability_and_probability_raw():
    df = table(
        # p(a) = 1/2, options 1/4 + 1/4: probability 0.5 / (0.5 + 0.5) = 0.5
        row("retain", gt=LN2, pert=[LN4, LN4]),
        # p(a) = 1, option 1/4: probability 1 / 1.25 = 0.8
        row("retain", gt=0.0, pert=[LN4]),
        # no options: p(a) / p(a) = 1 by the formula, and no truth ratio
        row("forget", gt=LN2),
    )
    scores = score_table(df)
    assert scores["retain/probability"] == pytest.approx((0.5 + 0.8) / 2)
    assert scores["retain/probability_raw"] == pytest.approx((0.5 + 1.0) / 2)
    assert scores["forget/probability"] == pytest.approx(1.0)
    assert scores["forget/probability_raw"] == pytest.approx(0.5)
    assert scores["forget/truth_ratio"] is None


def test_truth_ratio_is_per_sample_not_averaged_over_samples():
    df = table(
        # tr = exp(-ln4) / exp(-0) = 1/4  ->  1 - tr = 0.75
        row("retain", gt=1.0, para=0.0, pert=[LN4, LN4]),
        # tr = exp(-0) / exp(-ln2) = 2  ->  max(0, 1 - 2) = 0
        row("retain", gt=1.0, para=LN2, pert=[0.0, 0.0]),
    )
    tr = per_sample_truth_ratio(df)
    assert list(tr.index) == list(df.index)
    assert tr.tolist() == pytest.approx([0.25, 2.0])
    ours = score_table(df)["retain/truth_ratio"]
    assert ours == pytest.approx((0.75 + 0.0) / 2)

    # The wrong variant averages the perturbed losses over all samples first (one mean, ln 2).
    pooled = np.mean([LN4, LN4, 0.0, 0.0])
    wrong_tr = np.exp(np.array([0.0, LN2]) - pooled)  # [0.5, 1.0]
    wrong = np.maximum(0, 1 - wrong_tr).mean()  # 0.25
    assert wrong == pytest.approx(0.25)
    assert ours != pytest.approx(wrong)


def test_truth_ratio_uses_geometric_mean_of_wrong_answer_probabilities():
    # wrong answers with p = 1 and 1/4: exp(-mean L) = exp(-ln2) = 1/2 (not the arithmetic 5/8)
    df = table(row("retain", gt=0.0, para=0.0, pert=[0.0, LN4]))
    assert per_sample_truth_ratio(df).tolist() == pytest.approx([0.5])
    assert score_table(df)["retain/truth_ratio"] == pytest.approx(0.5)


def test_null_paraphrase_falls_back_to_gt_loss():
    df = table(
        row("real_authors", gt=LN2, para=None, pert=[LN4]),  # tr = exp(ln2 - ln4) = 0.5
        row("real_authors", gt=5.0, para=0.0, pert=[LN4]),  # para present: tr = 1/4, gt unused
        row("real_authors", gt=0.0, para=float("nan"), pert=[LN2]),  # NaN too: tr = 1/2
    )
    assert per_sample_truth_ratio(df).tolist() == pytest.approx([0.5, 0.25, 0.5])
    assert score_table(df)["real_authors/truth_ratio"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)


def test_rouge_l_is_recall_of_the_answer():
    df = table(
        # LCS of "paris is the capital" / "the capital is paris" is "the capital": 2 of 4 words
        row(
            "world_facts", gt=0.0, answer="Paris is the capital", generation="The capital is Paris"
        ),
        row(
            "world_facts", gt=0.0, answer="Paris is the capital", generation="Paris is the capital"
        ),
        # recall, not precision: both answer words are in the (longer) generation
        row("retain", gt=0.0, answer="the cat", generation="the cat sat on the mat"),
        # stemmer on: "books" matches "book", so all 3 answer words are recalled
        row("forget", gt=0.0, answer="she wrote books", generation="she wrote a book"),
    )
    scores = score_table(df)
    assert scores["world_facts/rouge_l"] == pytest.approx((0.5 + 1.0) / 2)
    assert scores["retain/rouge_l"] == pytest.approx(1.0)
    assert scores["forget/rouge_l"] == pytest.approx(1.0)


def test_group_is_harmonic_mean_over_its_tasks():
    df = table(
        # rouge 2/4; probability 1 / (1 + 1/4) = 0.8; tr = 1/4 -> 0.75
        row("retain", gt=0.0, para=0.0, pert=[LN4], answer="a b c d", generation="a b"),
        # rouge 1; probability 0.5 / (0.5 + 0.25) = 2/3; tr = exp(ln2 - ln4) = 1/2 -> 0.5
        row("retain_facerec", gt=LN2, para=None, pert=[LN4]),
    )
    scores = score_table(df)
    values = [0.5, 0.8, 0.75, 1.0, 2 / 3, 0.5]
    assert group_values(scores, ["retain", "retain_facerec"]) == pytest.approx(values)
    assert scores["retain"] == pytest.approx(6 / sum(1 / v for v in values))
    assert scores["real"] is None and scores["forget"] is None  # no task of theirs present


def test_group_with_a_zero_is_zero():
    # tr = exp(0 - 0) = 1 -> truth ratio 0; the harmonic mean is then 0, with no warning or NaN
    df = table(row("forget", gt=0.0, para=0.0, pert=[0.0]))
    scores = score_table(df)
    assert scores["forget/truth_ratio"] == 0.0
    assert scores["forget"] == 0.0


def knowledge_table(knows: bool):
    rows = []
    for task in TEXT_TASKS:
        for i in range(3):
            answer = f"answer number {i} of {task}"
            if knows:  # likes the answer and its paraphrase, dislikes the wrong answers
                rows.append(row(task, 0.1, 0.2, [3.0, 3.5, 4.0], answer, answer))
            else:
                rows.append(row(task, 3.0, 3.0, [0.5, 1.0, 1.5], answer, "no idea at all"))
    return table(*rows)


def test_knowing_the_answers_scores_higher_on_every_aggregate():
    knows, ignorant = score_table(knowledge_table(True)), score_table(knowledge_table(False))
    for key in ("real", "retain", "forget"):
        assert knows[key] > ignorant[key], key
    for task in TEXT_TASKS:
        for metric in ("rouge_l", "probability", "probability_raw", "truth_ratio"):
            assert knows[f"{task}/{metric}"] > ignorant[f"{task}/{metric}"], (task, metric)


def test_forget_quality_identical_model_and_gold():
    df = knowledge_table(True)
    scores = score_table(df, gold=df.copy())
    assert scores["log10_forget_quality"] == 0.0
    assert scores["forget_quality_js"] == 1.0


def separated_tables(n=10):
    # model: log tr = 0 - k for k in 3..12 (knows the forget set); gold: log tr = 5 - 1 = 4 or more
    model = table(*[row("forget", 0.0, 0.0, [3.0 + k]) for k in range(n)])
    gold = table(*[row("forget", 1.0, 5.0 + 0.1 * k, [1.0]) for k in range(n)])
    return model, gold


def test_forget_quality_separated_distributions():
    model, gold = separated_tables()
    model_tr = np.exp(0.0 - (3.0 + np.arange(10)))
    gold_tr = np.exp(5.0 + 0.1 * np.arange(10) - 1.0)
    assert per_sample_truth_ratio(model).to_numpy() == pytest.approx(model_tr)

    scores = score_table(model, gold=gold)
    expected = math.log10(ks_2samp(model_tr, gold_tr).pvalue)
    assert scores["log10_forget_quality"] == pytest.approx(expected)
    assert scores["log10_forget_quality"] < -4  # exact p = 2 / C(20, 10) ~ 1.1e-5
    # log tr of the model lies in [-12, -3], of gold in [4, 4.9]: no shared bin
    assert scores["forget_quality_js"] == pytest.approx(0.0, abs=1e-12)


def test_forget_quality_js_by_hand():
    # log tr: model [0, 0], gold [0, 1]; 20 bins over [0, 1] -> model (1, 0), gold (1/2, 1/2)
    # in the first and last bin; mixture m = (3/4, 1/4)
    kl_model = 1.0 * math.log2(1.0 / 0.75)
    kl_gold = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    expected = 1 - math.sqrt((kl_model + kl_gold) / 2)
    got = forget_quality_js(np.array([1.0, 1.0]), np.array([1.0, math.e]))
    assert got == pytest.approx(expected)

    # log tr: model [0], gold [0, 0.07, 1]; bins of width 0.05 -> gold in bins 0, 1 and 19:
    # model (1, 0, 0), gold (1/3, 1/3, 1/3), m = (2/3, 1/6, 1/6)
    kl_model = math.log2(1.5)
    kl_gold = (1 / 3) * math.log2(0.5) + (2 / 3) * math.log2(2.0)
    expected = 1 - math.sqrt((kl_model + kl_gold) / 2)
    got = forget_quality_js(np.array([1.0]), np.exp([0.0, 0.07, 1.0]))
    assert got == pytest.approx(expected)


def test_forget_quality_ignores_inverting_the_ratio():
    # TOFU and the CLEAR code use 1/tr; neither forget-quality number may depend on the convention
    rng = np.random.default_rng(0)
    a, b = np.exp(rng.normal(0, 1, 30)), np.exp(rng.normal(0.5, 1.5, 40))
    assert forget_quality_js(1 / a, 1 / b) == pytest.approx(forget_quality_js(a, b))
    assert log10_forget_quality(1 / a, 1 / b) == pytest.approx(log10_forget_quality(a, b))


def test_without_gold_forget_quality_is_none_and_json_is_strict():
    scores = score_table(knowledge_table(True))
    assert scores["log10_forget_quality"] is None
    assert scores["forget_quality_js"] is None
    json.dumps(scores, allow_nan=False)
    assert all(v is None or type(v) is float for v in scores.values())

    # a task without options has a None truth ratio: still strict JSON
    with_none = score_table(table(row("world_facts", gt=1.0)), gold=knowledge_table(False))
    assert with_none["world_facts/truth_ratio"] is None
    assert with_none["log10_forget_quality"] is None  # the model table has no forget rows
    json.dumps(with_none, allow_nan=False)


def expected_keys(tasks):
    per_task = {f"{t}/{m}" for t in tasks for m in ("rouge_l", "probability")}
    per_task |= {f"{t}/{m}" for t in tasks for m in ("probability_raw", "truth_ratio")}
    overall = {"real", "retain", "forget", "log10_forget_quality", "forget_quality_js"}
    # the membership attack (tests/test_language_mia.py): null without a holdout task
    overall |= {"mia_loss_auc", "mia_zlib_auc", "mia_minkpp_auc"}
    return per_task | overall | {"privleak", "privleak_loss", "privleak_zlib"}


def test_cli_writes_json_with_the_expected_keys(tmp_path, capsys):
    model, gold = tmp_path / "model.parquet", tmp_path / "gold.parquet"
    knowledge_table(True).to_parquet(model)
    knowledge_table(False).to_parquet(gold)
    out = tmp_path / "scores" / "model.json"

    assert main([str(model), "--gold", str(gold), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert set(scores) == expected_keys(TEXT_TASKS)
    assert scores == pytest.approx(score_table(knowledge_table(True), knowledge_table(False)))
    assert scores["log10_forget_quality"] < 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json"]  # no temp file left
    assert capsys.readouterr().out == ""

    # without --out the same JSON goes to stdout; without --gold forget quality is null
    assert main([str(model)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == expected_keys(TEXT_TASKS)
    assert printed["log10_forget_quality"] is None and printed["forget_quality_js"] is None


def assert_one_line_error(capsys, *words):
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    for word in words:
        assert word in captured.err


def test_cli_missing_column_is_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "no_answer.parquet"
    knowledge_table(True).drop(columns="answer").to_parquet(bad)
    out = tmp_path / "out.json"
    out.write_text("old")
    assert main([str(bad), "--out", str(out)]) == 2
    assert_one_line_error(capsys, "no_answer.parquet", "answer")
    assert out.read_text() == "old"  # nothing written, nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_answer.parquet", "out.json"]

    good = tmp_path / "good.parquet"
    knowledge_table(True).to_parquet(good)
    assert main([str(good), "--gold", str(bad)]) == 2  # the gold table is checked too
    assert_one_line_error(capsys, "no_answer.parquet", "answer")


def test_cli_missing_or_unreadable_file_is_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "absent.parquet")]) == 2
    assert_one_line_error(capsys, "absent.parquet")

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet\n" * 10)
    assert main([str(garbage)]) == 2
    assert_one_line_error(capsys, "garbage.parquet")


def test_module_entry_point_reports_one_line(tmp_path):
    bad = tmp_path / "no_gt.parquet"
    knowledge_table(True).drop(columns="gt_loss").to_parquet(bad)
    cmd = [sys.executable, "-m", "clearbench.metrics.text", str(bad)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {bad}: missing column(s) gt_loss\n"
