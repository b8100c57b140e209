"""Vision relearning attack: finetune every model on a slice of its forget side, then score."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from clearbench.vision import mia, report
from clearbench.vision import model as vm
from clearbench.vision import protocol as P
from tests.test_vision import HP, _double, synthetic_tables

# relearn half of each F / H identity's 3 scored photos (2 of 3: round(1.5)), 8 steps
RELEARN = dict(steps=8, batch_size=8, lr=0.01, forget_fraction=0.5, seed=0)


@pytest.fixture(scope="module")
def tables():
    return synthetic_tables()


@pytest.fixture(scope="module")
def data(tables):
    return P.vision_data(tables[1], tables[2], size=16, n_enroll=5)


@pytest.fixture(scope="module")
def originals(data):
    hp = P.merge(HP, dict(train=dict(epochs=1)))
    return P.train_models(vm.build_model(HP["model"], 1, seed=0), data, hp)


def _hp(**relearn):
    return P.merge(HP, dict(attacks=dict(relearn=RELEARN | relearn)))


def test_slice_is_per_identity_seeded_and_never_scored(originals, data):
    hp = _hp()
    part = P.relearn_slice(data, hp)
    assert np.array_equal(part, P.relearn_slice(data, hp))  # seeded
    assert not np.array_equal(part, P.relearn_slice(data, _hp(seed=1)))
    assert not (part & data.enroll).any()
    for c in range(data.n_classes):
        scored = (data.labels == c) & ~data.enroll
        side = c in data.forget or c in data.holdout
        assert part[scored].sum() == (2 if side else 0), c  # never all: 1 photo stays scored
    state = P.relearn_models(originals, data, hp)
    scores = P.relearn_scores(state, data, hp)
    mia.validate_scores(scores)
    mia.check_roles(scores)
    taken = set(data.sample_ids[part])
    assert not taken & set(scores["sample_id"]) and len(taken) == 8
    # the rest is exactly score_models' rows: every model keeps the same F / H photos
    full = P.score_models(state, data, hp)
    assert len(scores) == (~full["sample_id"].isin(taken)).sum()
    side = scores[scores["group"] != "retain"].groupby("model")["sample_id"].apply(frozenset)
    assert side.nunique() == 1 and len(side) == 8
    assert mia.score_mia(scores)["u_lira"] is not None


def test_every_model_moves_and_the_loop_agrees(originals, data):
    # float64: the vectorized chunk and one model at a time relearn identically (3 steps:
    # batch norm over 4 photos drawn twice amplifies rounding about 30x a step)
    two = _double(originals.take([1, 6]))
    data64 = dataclasses.replace(data, pixels=data.pixels.double())
    vec = P.relearn_models(two, data64, _hp(steps=3))
    loop = P.relearn_models(two, data64, _hp(steps=3), vectorized=False)
    for name in two.params:
        torch.testing.assert_close(loop.params[name], vec.params[name], rtol=1e-7, atol=1e-7)
    moved = lambda r: any(not torch.equal(vec.params[k][r], two.params[k][r]) for k in two.params)  # noqa: E731
    assert moved(0) and moved(1)  # targets and shadows alike
    assert vec.meta["status"] == ["ok", "ok"] and vec.meta["relearn_seconds"] > 0


def test_bad_relearn_keys_are_one_line_errors(data):
    with pytest.raises(ValueError, match="vision.attacks.relearn: unknown key 'stpes'"):
        P.relearn_slice(data, _hp(stpes=3))
    with pytest.raises(ValueError, match="forget_fraction"):
        P.relearn_slice(data, _hp(forget_fraction=1.0))


def test_relearning_brings_back_an_unlearned_forget_side():
    # built as in test_vision's neggrad case, with 14 photos per identity (9 scored): 32 px
    # models that identify their forget side. Neggrad closes (overshoots) the gap between the
    # IN and the OUT phi of each photo of F and H; relearning on about half of the photos of
    # those identities opens it again on the other half. Gold models, relearned alike, gain
    # far less: what comes back was still in the unlearned weights.
    _, full, split = synthetic_tables(photos=14)
    data32 = P.vision_data(full, split, size=32, n_enroll=5)
    tiny = {"config": vm.TINY_CONFIG, "embedding_dim": 16}
    hp = P.merge(
        HP,
        dict(
            image_size=32,
            model=tiny,
            train=dict(epochs=25, batch_size=32, lr=0.1, momentum=0.0),
            unlearn=dict(epochs=3, batch_size=16, lr=0.01, momentum=0.9),
            attacks=dict(relearn=dict(steps=10, batch_size=32, lr=0.01, forget_fraction=0.5)),
        ),
    )
    base, models = vm.build_model(tiny, 1, seed=0), [0, 1, 4, 5]
    state = P.train_models(base, data32, hp, models=models)
    gold = P.train_models(base, data32, hp, models=models, gold=True)
    unlearned = P.unlearn_models(state, data32, "neggrad", hp)

    def gap(s):
        """Mean over the scored photos of F and H: phi on the models that trained on the
        photo's identity (forget group) minus phi on those that did not (holdout)."""
        per = P.relearn_scores(s, data32, hp).groupby(["sample_id", "group"])["phi"].mean()
        per = per.unstack()[["forget", "holdout"]].dropna()  # retain photos: neither
        return float((per["forget"] - per["holdout"]).mean())

    trained, forgot = gap(state), gap(unlearned)
    relearned = gap(P.relearn_models(unlearned, data32, hp))
    gold_gain = gap(P.relearn_models(gold, data32, hp)) - gap(gold)
    assert trained > 1.5 and forgot < 0, (trained, forgot)
    assert relearned > forgot + 2.0, (trained, forgot, relearned)
    assert relearned - forgot > gold_gain + 2.0, (forgot, relearned, gold_gain)


def test_cli_relearn_chunks_collect_and_mia(tables, tmp_path):
    # the pipeline's steps: each chunk relearned in its own job, collected, then `mia`
    celebs, full, split = tables
    for name, df in (("full", full), ("split", split)):
        df.to_parquet(tmp_path / f"{name}.parquet")
    hp = P.merge(HP, dict(n_models=4, train=dict(epochs=1), attacks=dict(relearn=RELEARN)))
    common = ["--full", str(tmp_path / "full.parquet"), "--split", str(tmp_path / "split.parquet"),
              "--hp", json.dumps(hp)]  # fmt: skip
    base = vm.build_model(HP["model"], 1, seed=0)
    data = P.vision_data(full, split, size=16, n_enroll=5)
    for chunk in ((0, 1), (2, 3)):
        tag = f"{chunk[0]}-{chunk[1] + 1}"
        P.train_models(base, data, hp, models=chunk, gold=True).save(tmp_path / f"gold{tag}.pt")
        assert P.main(["relearn", *common, "--state", str(tmp_path / f"gold{tag}.pt"),
                       "--out", str(tmp_path / "relearn" / f"r{tag}.parquet"),
                       "--meta", str(tmp_path / "relearn" / f"r{tag}.json")]) == 0  # fmt: skip
        meta = json.loads((tmp_path / "relearn" / f"r{tag}.json").read_text())
        assert meta["kind"] == "gold" and meta["model_ids"] == list(chunk)
        assert meta["relearn_seconds"] > 0 and meta["status"] == ["ok", "ok"]
    out = tmp_path / "relearn_scores.parquet"
    summary = report.collect([str(tmp_path / "relearn" / f"r{t}.parquet") for t in ("0-2", "2-4")],
                             [str(tmp_path / "relearn" / f"r{t}.json") for t in ("0-2", "2-4")],
                             str(out), str(tmp_path / "relearn_summary.json"))  # fmt: skip
    scores = pd.read_parquet(out)
    assert sorted(scores["model"].unique()) == [0, 1, 2, 3] and summary["status"] == "ok"
    taken = set(data.sample_ids[P.relearn_slice(data, hp)])
    assert not taken & set(scores["sample_id"])
    assert mia.main([str(out), "--out", str(tmp_path / "mia.json")]) == 0
    assert json.loads((tmp_path / "mia.json").read_text())["u_lira"] == summary["u_lira"]
