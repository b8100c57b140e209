"""Membership inference on the language tracks: Min-K%++ token scores written by eval, the
forget-vs-holdout AUCs and MUSE's PrivLeak computed by metrics (issue 15, point 4)."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from clearbench.data.text import read_qa
from clearbench.eval.text import EVAL_SCHEMA, evaluate, minkpp_scores
from clearbench.metrics.text import main, mink_mean, roc_auc, score_table
from clearbench.models.factory import load_model, load_tokenizer
from clearbench.train.qa import encode

HP = {"seed": 0, "max_len": 128, "max_samples": 0, "max_new_tokens": 4, "batch_size": 5}
NEW_KEYS = {
    "mia_loss_auc", "mia_zlib_auc", "mia_minkpp_auc", "privleak", "privleak_loss", "privleak_zlib"
}  # fmt: skip


def test_minkpp_token_scores_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([1, 2])
    expected = []
    for row, t in zip(logits.tolist(), targets.tolist(), strict=True):
        z = sum(math.exp(x) for x in row)
        logp = [x - math.log(z) for x in row]
        p = [math.exp(lp) for lp in logp]
        mu = sum(pi * lp for pi, lp in zip(p, logp, strict=True))
        sigma = math.sqrt(sum(pi * lp**2 for pi, lp in zip(p, logp, strict=True)) - mu**2)
        expected.append((logp[t] - mu) / sigma)
    assert minkpp_scores(logits, targets).tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] < 0 < expected[1]  # an unlikely token scores low, the mode high
    # a flat distribution says nothing: 0, not NaN
    assert minkpp_scores(torch.zeros(1, 4), torch.tensor([3])).tolist() == [0.0]


def test_mink_mean_takes_the_lowest_fraction_and_at_least_one_token():
    scores = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert mink_mean(scores, 0.2) == 1.0
    assert mink_mean(scores, 0.4) == 1.5
    assert mink_mean(scores, 0.01) == 1.0
    assert mink_mean(scores, 1.0) == 3.0
    assert np.isnan(mink_mean(None)) and np.isnan(mink_mean([]))


def test_auc_by_hand_with_ties():
    # member > non-member pairs: (3,2) (3,0) (2,0) (1,0) = 4, one tie (2,2) = 0.5, of 6 pairs
    assert roc_auc([3.0, 2.0, 1.0], [2.0, 0.0]) == pytest.approx(4.5 / 6)
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    assert roc_auc([0.0], [1.0, 2.0]) == 0.0
    assert roc_auc([1.0, np.nan], [0.0]) == 1.0  # a row without a score is left out
    assert roc_auc([1.0], []) is None


def mia_table(forget_loss: float, holdout_loss: float, seed: int, n: int = 12) -> pd.DataFrame:
    """forget and holdout rows around the given losses; gt_minkpp as high as the loss is low."""
    rng = np.random.default_rng(seed)
    rows = []
    for task, centre in (("forget", forget_loss), ("holdout", holdout_loss)):
        for i in range(n):
            gt = centre + rng.normal(0, 0.3)
            tokens = int(rng.integers(3, 9))
            rows.append(
                {
                    "task": task,
                    "sample_id": f"{task}{i}",
                    "gt_loss": gt,
                    "para_loss": gt + 0.1,
                    "perturbed_losses": list(gt + rng.uniform(0, 1, 3)),
                    "generation": "Born in Lima in 1970.",
                    "answer": "She was born in Lima, Peru, in 1970." + " x" * i,
                    "gt_minkpp": list(-gt + rng.normal(0, 0.5, tokens)),
                }
            )
    return pd.DataFrame(rows, columns=EVAL_SCHEMA.names)


def test_privleak_is_zero_against_itself_and_positive_when_forget_is_remembered():
    gold = mia_table(3.0, 3.0, seed=0)
    same = score_table(gold, gold)
    assert same["privleak"] == same["privleak_loss"] == same["privleak_zlib"] == 0.0
    remembered = mia_table(0.5, 3.0, seed=1)
    scores = score_table(remembered, gold)
    assert scores["mia_loss_auc"] == 1.0 and scores["mia_minkpp_auc"] > 0.9
    for key in ("privleak", "privleak_loss", "privleak_zlib"):
        assert scores[key] > 0.3, key
    auc = scores["mia_minkpp_auc"]
    assert scores["privleak"] == pytest.approx(
        (auc - same["mia_minkpp_auc"]) / same["mia_minkpp_auc"]
    )
    # forgot too much: the forget answers are now less likely than unseen ones
    assert score_table(mia_table(6.0, 3.0, seed=2), gold)["privleak"] < 0


def test_zlib_score_divides_the_loss_by_the_compressed_answer():
    df = mia_table(1.0, 1.0, seed=3)
    df["gt_loss"] = 1.0
    # all losses equal: only the zlib entropy tells rows apart, longer answers score higher
    longer = df["answer"].map(lambda a: len(zlib.compress(a.encode("utf-8"))))
    expected = roc_auc(-1.0 / longer[df.task == "forget"], -1.0 / longer[df.task == "holdout"])
    scores = score_table(df)
    assert scores["mia_zlib_auc"] == expected and scores["mia_loss_auc"] == 0.5


def test_old_table_scores_with_the_new_keys_null():
    table = mia_table(1.0, 2.0, seed=4)
    table.loc[table.task == "holdout", "task"] = "retain"
    new = score_table(table, table)
    old = score_table(table.drop(columns="gt_minkpp"), table.drop(columns="gt_minkpp"))
    assert all(old[k] is None for k in NEW_KEYS)  # no holdout task
    assert {k: v for k, v in old.items() if k not in NEW_KEYS} == {
        k: v for k, v in new.items() if k not in NEW_KEYS
    }
    # holdout rows but no gt_minkpp column: loss and zlib still score, minkpp keys are null
    with_holdout = mia_table(1.0, 2.0, seed=4).drop(columns="gt_minkpp")
    scores = score_table(with_holdout, with_holdout)
    assert scores["mia_minkpp_auc"] is None and scores["privleak"] is None
    assert scores["mia_loss_auc"] is not None and scores["privleak_loss"] == 0.0
    assert "holdout/rouge_l" in scores  # scored as a task, in no group
    assert scores["forget"] == score_table(with_holdout[with_holdout.task != "holdout"])["forget"]


def test_cli_flag_mink_k(tmp_path):
    table, gold = mia_table(2.5, 3.0, seed=5), mia_table(3.0, 3.0, seed=6)
    for name, df in (("m", table), ("g", gold)):
        df.to_parquet(tmp_path / f"{name}.parquet")
    outs = []
    for k in ("0.2", "1.0"):
        out = tmp_path / f"k{k}.json"
        argv = [str(tmp_path / "m.parquet"), "--gold", str(tmp_path / "g.parquet")]
        assert main([*argv, "--out", str(out), "--mink-k", k]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["privleak"] == score_table(table, gold, mink_k=0.2)["privleak"]
    assert outs[1]["mia_minkpp_auc"] == score_table(table, gold, mink_k=1.0)["mia_minkpp_auc"]
    assert outs[0]["mia_minkpp_auc"] != outs[1]["mia_minkpp_auc"]  # the flag reaches the score
    with pytest.raises(SystemExit):
        main([str(tmp_path / "m.parquet"), "--mink-k", "0"])


def test_eval_writes_one_minkpp_score_per_answer_token(original_dir, text_data, tmp_path):
    holdout = text_data / "mia_holdout.parquet"
    if not holdout.is_file():  # datasets built before the holdout authors: forget's schema
        holdout = tmp_path / "mia_holdout.parquet"
        read_qa(text_data / "retain_eval.parquet").to_parquet(holdout)
    tasks = {"forget": str(text_data / "forget10.parquet"), "holdout": str(holdout)}
    out = tmp_path / "eval.parquet"
    evaluate(str(original_dir), tasks, str(out), HP)
    assert pq.read_schema(out).names == EVAL_SCHEMA.names and EVAL_SCHEMA.names[-1] == "gt_minkpp"
    df = pd.read_parquet(out)
    assert set(df.task) == {"forget", "holdout"}

    model, meta = load_model(original_dir)
    tok = load_tokenizer(meta["base"])
    qa = pd.concat([read_qa(p) for p in tasks.values()]).set_index("sample_id")
    for row in df.itertuples():
        ids, labels = encode(tok, qa.loc[row.sample_id, "question"], row.answer, HP["max_len"])
        assert len(row.gt_minkpp) == sum(t != -100 for t in labels), row.sample_id
    # the first row by hand, from the model's logits in float64
    row = df.iloc[0]
    ids, labels = encode(tok, qa.loc[row.sample_id, "question"], row.answer, HP["max_len"])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
    by_hand = []
    for pos, target in enumerate(labels[1:]):
        if target != -100:
            mu = (logp[pos].exp() * logp[pos]).sum()
            sigma = ((logp[pos].exp() * logp[pos] ** 2).sum() - mu**2).sqrt()
            by_hand.append(((logp[pos, target] - mu) / sigma).item())
    assert list(row.gt_minkpp) == pytest.approx(by_hand, abs=1e-4)
    scores = score_table(df)
    assert all(scores[f"mia_{a}_auc"] is not None for a in ("loss", "zlib", "minkpp"))
