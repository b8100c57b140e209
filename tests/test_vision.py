"""Vision track: biometric model, vectorized ensemble, membership protocol, methods, report."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clearbench.data import faces
from clearbench.vision import ensemble as ens
from clearbench.vision import methods as vmethods
from clearbench.vision import mia, report
from clearbench.vision import model as vm
from clearbench.vision import protocol as P

MICRO = dict(embedding_size=4, hidden_sizes=[4, 8, 8, 16], depths=[2, 2, 2, 2], layer_type="basic")
SPEC = {"config": MICRO, "embedding_dim": 16}
# 8 authors (F, H: 2 each, 4 others), 8 photos each at 16 px; M = 8 models.
HP = dict(
    image_size=16,
    n_models=8,
    chunk=8,
    model=SPEC,
    pretrain=dict(epochs=2, batch_size=16, lr=0.01, test_fraction=0.25),
    train=dict(epochs=2, batch_size=16, lr=0.01),
    unlearn=dict(epochs=1, batch_size=8, lr=0.01),
)


def png(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def synthetic_tables(n_celebs=4, n_authors=8, photos=8, size=32, n_side=2, seed=0):
    """In-memory celebs / full / vision_split tables with the data builder's schema."""
    z, _ = faces.sample_face_pool(n_celebs + n_authors, seed=seed, size=32)

    def rows(i, n):
        return faces.render_identity_images(z[i], n, seed=seed * 7919 + i, size=size)

    celebs = pd.DataFrame(
        [dict(sample_id=f"cb{i:04d}_{j:02d}", identity=i, image=png(im))
         for i in range(n_celebs) for j, im in enumerate(rows(i, photos))]
    )  # fmt: skip
    full = pd.DataFrame(
        [dict(sample_id=f"a{a:03d}_{j:02d}", author_id=100 + a, name=f"author {a}", question="q",
              answer="a", caption="c", image=png(im))
         for a in range(n_authors) for j, im in enumerate(rows(n_celebs + a, photos))]
    )  # fmt: skip
    role = ["forget"] * n_side + ["holdout"] * n_side + ["other"] * (n_authors - 2 * n_side)
    split = pd.DataFrame({"author_id": 100 + np.arange(n_authors), "role": role})
    return celebs, full, split


@pytest.fixture(scope="module")
def tables():
    return synthetic_tables()


@pytest.fixture(scope="module")
def data(tables):
    _, full, split = tables
    return P.vision_data(full, split, size=16, n_enroll=5)


@pytest.fixture(scope="module")
def pretrained(tables):
    celebs = tables[0]
    images, ids = P.load_images(celebs, 16)
    model, metrics = P.pretrain(images, ids["identity"].to_numpy(), HP)
    return model, metrics


@pytest.fixture(scope="module")
def originals(pretrained, data):
    return P.train_models(pretrained[0], data, HP)


# ----------------------------------------------------------------------------- model


def test_load_images_decodes_and_resizes(tables):
    images, ids = P.load_images(tables[1], size=16)
    assert images.shape == (64, 16, 16, 3) and images.dtype == np.uint8
    assert list(ids["identity"][:2]) == [100, 100] and "image" not in ids


def test_tiny_resnet_save_load_roundtrip(tmp_path):
    model = vm.build_model(SPEC, num_classes=5, seed=3).eval()
    vm.save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "config.json").exists()  # a real save_pretrained folder
    back = vm.load_model(tmp_path / "m").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for a, b in zip(model(x)[:2], back(x)[:2], strict=True):
            torch.testing.assert_close(a, b)
    # the checkpoint path of the factory, as for microsoft/resnet-18: an image-classification
    # checkpoint loads as the backbone (prefix stripped, classifier dropped)
    from transformers import ResNetConfig, ResNetForImageClassification

    clf = ResNetForImageClassification(ResNetConfig(**MICRO, num_labels=3))
    clf.save_pretrained(tmp_path / "clf")
    backbone = vm.build_backbone({"checkpoint": str(tmp_path / "clf")})
    torch.testing.assert_close(
        backbone.embedder.embedder.convolution.weight,
        clf.resnet.embedder.embedder.convolution.weight,
    )
    with pytest.raises(vm.ModelError):
        vm.build_backbone({"checkpoint": str(tmp_path / "missing")})


def test_centroid_identification_easy_case():
    g = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    ids = np.repeat(np.arange(4), 7)
    emb = torch.nn.functional.normalize(
        centers[ids] + 0.05 * torch.randn(28, 8, generator=g), dim=-1
    )
    enroll = np.tile(np.arange(7) < 5, 4)
    cen = vm.enroll(emb, ids, enroll, 4)
    torch.testing.assert_close(cen.norm(dim=-1), torch.ones(4))
    cos, pred = vm.identify(emb, cen)
    assert (pred.numpy() == ids).all()
    # with a leading model dim, each model enrolls with its own embeddings
    cos2, pred2 = vm.identify(
        emb.expand(3, -1, -1), vm.enroll(emb.expand(3, -1, -1), ids, enroll, 4)
    )
    assert pred2.shape == (3, 28) and (pred2.numpy() == ids).all()


def test_margin_losses():
    cos = torch.tensor([[[0.9, 0.1, 0.0]]])
    y = torch.tensor([[0]])
    plain = vm.identity_loss(cos, y, m=0.0)
    assert vm.identity_loss(cos, y, m=0.3) > plain  # a margin makes the target harder
    assert vm.identity_loss(cos, y, m=0.3, kind="arcface") > plain
    mask = torch.tensor([[True, True, False]])
    assert vm.identity_loss(cos, y, mask, m=0.0) < plain  # a masked class is no negative


# -------------------------------------------------------------------------- ensemble


def _toy_task(m=4, c=6, n=48, steps=4, batch=8, size=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    labels = np.arange(n) % c
    mask = np.zeros((m, c), bool)
    for k in range(m):
        mask[k, [(k + j) % c for j in range(3)]] = True
    pools = [np.flatnonzero(mask[k][labels]) for k in range(m)]
    plan = ens.index_plan(pools, steps, batch, seeds=[[0, k] for k in range(m)])
    return ens.IdentityTask(pixels, labels, plan, mask), mask


def test_index_plan_per_model_pools_and_orders():
    pools = [np.arange(10), np.arange(100, 107)]
    plan = ens.index_plan(pools, 6, 4, seeds=[1, 2])
    assert plan.shape == (2, 6, 4)
    assert set(plan[0].ravel()) <= set(pools[0]) and set(plan[1].ravel()) <= set(pools[1])
    assert sorted(plan[0].ravel()[:10]) == list(range(10))  # an epoch is a permutation
    again = ens.index_plan(pools, 6, 4, seeds=[1, 2])
    assert (plan == again).all()
    assert not (ens.index_plan([pools[0]] * 2, 6, 4, seeds=[1, 3])[1] == plan[0]).all()


def test_ensemble_equals_loop_trainer():
    task, _ = _toy_task()
    models = [vm.build_model(SPEC, 6, seed=k).double() for k in range(4)]
    assert not torch.equal(models[0].classes, models[1].classes)  # independent inits
    state = ens.stack(models)
    vec = ens.train(state, task, ens.Opt(lr=0.05), chunk=4)
    vec2 = ens.train(state, task, ens.Opt(lr=0.05), chunk=3)  # chunking changes nothing
    loop = ens.train(state, task, ens.Opt(lr=0.05), vectorized=False)
    for name in state.params:
        assert not torch.allclose(vec.params[name], state.params[name]) or "classes" not in name
        torch.testing.assert_close(vec.params[name], loop.params[name], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(vec2.params[name], loop.params[name], rtol=1e-9, atol=1e-9)
    for name in state.buffers:  # batch-norm running stats: per model, identical
        torch.testing.assert_close(vec.buffers[name], loop.buffers[name], rtol=1e-9, atol=1e-9)
    assert vec.buffers[next(k for k in state.buffers if "num_batches" in k)].tolist() == [4] * 4
    # an unstacked model reproduces the ensemble's eval embeddings
    one = ens.unstack(vec, 2).double().eval()
    x = task.pixels[:5]
    with torch.no_grad():
        torch.testing.assert_close(one(x)[0], ens.embed(vec, x)[2])


def test_compare_ensemble_vs_loop_reports_ratio():
    task, _ = _toy_task(dtype=torch.float32, steps=2)
    state = ens.stack([vm.build_model(SPEC, 6, seed=k) for k in range(4)])
    r = ens.compare_ensemble_vs_loop(state, task, ens.Opt(lr=0.01), chunk=4)
    assert r["ratio"] > 0 and r["vectorized_s"] > 0 and r["max_abs_diff"] < 1e-2


def test_divergence_is_a_status_not_a_crash():
    task, _ = _toy_task(dtype=torch.float32, steps=3)
    state = ens.stack([vm.build_model(SPEC, 6, seed=k) for k in range(4)])

    class PoisonFirst:  # model 0's loss is NaN: it dies, the others train on untouched
        n_steps = task.n_steps

        def loss(self, t, rows, student, ctx):
            out = task.loss(t, rows, student, ctx)
            return torch.where(torch.as_tensor(rows) == 0, torch.nan, out)

    out = ens.train(state, PoisonFirst(), ens.Opt(lr=0.01), chunk=4)
    ref = ens.train(state, task, ens.Opt(lr=0.01), chunk=4)
    assert out.meta["alive"] == [False, True, True, True]
    for name in state.params:
        assert torch.isfinite(out.params[name]).all()
        torch.testing.assert_close(out.params[name][1:], ref.params[name][1:])


# -------------------------------------------------------------------------- protocol


def test_assignment_invariants():
    c, forget, holdout, m = 14, np.array([0, 1]), np.array([2, 3]), 16
    a = P.make_assignment(c, forget, holdout, m, seed=0)
    half = m // 2
    others = np.arange(4, c)
    for f in forget:  # each F identity in exactly the first M/2 models' training data
        assert a.train[:, f].sum() == half and a.train[:half, f].all()
    for h in holdout:
        assert a.train[:, h].sum() == half and a.train[half:, h].all()
    assert not (a.train[:, forget].any(1) & a.train[:, holdout].any(1)).any()
    assert (a.train[:, others].sum(1) == len(others) // 2).all()  # a random half of the others
    assert len({tuple(r) for r in a.train[:, others]}) > 1  # ... not the same half everywhere
    for side in (slice(0, half), slice(half, m)):
        roles = list(a.role[side])
        assert roles.count("target") == roles.count("shadow") == half // 2
    for k in range(m):
        g = a.groups(k)
        assert (a.side[k] == (g == "forget")).all() and (a.side[k] <= a.train[k]).all()
        assert ((g == "holdout") == a.other_side[k]).all() and not a.train[k][g == "holdout"].any()
        assert ((g == "retain") == (a.train[k] & ~a.side[k])).all()
    assert (a.retain & a.side).sum() == 0  # the gold models' training sets skip the forget side
    again = P.make_assignment(c, forget, holdout, m, seed=0)
    assert (again.train == a.train).all() and (again.role == a.role).all()
    with pytest.raises(ValueError):
        P.make_assignment(c, forget, holdout, 6)


def test_vision_data_enrollment(data):
    assert data.n_classes == 8 and len(data.forget) == len(data.holdout) == 2
    per_identity = pd.Series(data.enroll).groupby(data.labels).sum()
    assert (per_identity == 5).all()
    assert data.pixels.shape == (64, 3, 16, 16)


def test_pretrain_metrics(pretrained):
    model, metrics = pretrained
    assert isinstance(model, vm.IdentityModel) and metrics["n_test_ids"] == 1
    assert 0 <= metrics["train_acc"] <= 1 and 0 <= metrics["test_acc"] <= 1


def test_scores_contract(originals, data):
    scores = P.score_models(originals, data, HP)
    mia.validate_scores(scores)
    assert list(scores.columns) == mia.COLUMNS
    assert scores["model"].dtype == np.int64 and scores["phi"].dtype == np.float64
    assert scores["correct"].dtype == bool and np.isfinite(scores["phi"]).all()
    a = P.assignment_for(data, HP)
    enrolled = set(data.sample_ids[data.enroll])
    assert not set(scores["sample_id"]) & enrolled  # enrollment images are never scored
    for k, df in scores.groupby("model"):
        assert (df["role"] == a.role[k]).all()
        cls = np.searchsorted(data.identities, df["identity"].to_numpy())
        assert (df["group"].to_numpy() == a.groups(k)[cls]).all()
        forget_ids = set(data.identities[a.side[k]])
        assert set(df.loc[df.group == "forget", "identity"]) == forget_ids
        assert len(df) == 3 * (2 + 2 + 2)  # 3 scored photos x (F + H + 2 retain identities)
    metrics = mia.score_mia(scores)
    assert set(metrics) == set(mia.KEYS)
    assert all(v is None or 0 <= v <= 1 for v in metrics.values())


def test_gold_models_never_see_the_forget_side(pretrained, data):
    gold = P.train_models(pretrained[0], data, HP, models=[0, 5], gold=True)
    assert gold.model_ids == [0, 5] and gold.meta["kind"] == "gold"
    scores = P.score_models(gold, data, HP)
    assert set(scores["model"]) == {0, 5} and set(scores["group"]) == {
        "forget",
        "holdout",
        "retain",
    }


@pytest.mark.parametrize("method", sorted(vmethods.METHODS))
def test_every_method_runs_vectorized_and_looped(method, originals, data):
    # float64: the vectorized step and the plain one-model-at-a-time step must agree exactly
    two = _double(originals.take([0, 5]))
    data = dataclasses.replace(data, pixels=data.pixels.double())
    vec = P.unlearn_models(two, data, method, HP)
    assert vec.meta["status"] == ["ok", "ok"] and vec.meta["rte_seconds"] > 0
    assert vec.meta["kind"] == method
    assert any(not torch.equal(vec.params[k], two.params[k]) for k in two.params)
    loop = P.unlearn_models(two, data, method, HP, vectorized=False)
    for name in two.params:
        torch.testing.assert_close(loop.params[name], vec.params[name], rtol=1e-7, atol=1e-7)


def _double(state):
    f64 = lambda d: {k: v.double() if v.is_floating_point() else v for k, v in d.items()}  # noqa: E731
    return ens.State(f64(state.params), f64(state.buffers), state.config, state.model_ids,
                     dict(state.meta))  # fmt: skip


def _accuracy(state, data, hp, group):
    s = P.score_models(state, data, hp)
    return s.loc[s["group"] == group, "correct"].mean()


def test_neggrad_unlearns_a_model_that_knows_its_forget_set(tables):
    # built for it: 32 px, a wider net and long full-batch training, so that the models
    # identify their forget identities; neggrad must then break that and mostly keep retain.
    # Four models (two per side) average out the 3-photos-per-identity granularity.
    data32 = P.vision_data(tables[1], tables[2], size=32, n_enroll=5)
    tiny = {"config": vm.TINY_CONFIG, "embedding_dim": 16}
    train = dict(epochs=40, batch_size=32, lr=0.1, momentum=0.0)
    unlearn = dict(epochs=3, batch_size=16, lr=0.01, momentum=0.9)
    hp = P.merge(HP, dict(image_size=32, model=tiny, train=train, unlearn=unlearn))
    state = P.train_models(vm.build_model(tiny, 1, seed=0), data32, hp, models=[0, 1, 4, 5])
    before_f = _accuracy(state, data32, hp, "forget")
    before_r = _accuracy(state, data32, hp, "retain")
    assert before_f >= 0.7, before_f
    after = P.unlearn_models(state, data32, "neggrad", hp)
    after_f = _accuracy(after, data32, hp, "forget")
    after_r = _accuracy(after, data32, hp, "retain")
    assert after_f <= before_f - 0.25, (before_f, after_f)
    assert after_r >= 0.5 and before_f - after_f > before_r - after_r, (before_r, after_r)


def test_diverging_method_gives_status_and_no_rows(originals, data):
    hp = P.merge(HP, dict(unlearn=dict(method_hp=dict(neggrad=dict(lr=1e12, forget_weight=1e30)))))
    out = P.unlearn_models(originals.take([0, 4]), data, "neggrad", hp)
    assert out.meta["status"] == ["diverged", "diverged"]
    scores = P.score_models(out, data, hp)
    assert scores.empty and list(scores.columns) == mia.COLUMNS
    summary = P.summarize(out, scores)
    assert summary["status"] == "diverged" and summary["n_diverged"] == 2
    assert summary["u_lira"] is None


# ---------------------------------------------------------------------------- report


def synthetic_scores(n_models=8, n_samples=12, seed=0) -> pd.DataFrame:
    """A scores table (no training): models 0..M/2-1 targets, the rest shadows; each model has
    half the samples in forget (phi shifted up: exposed) and half in holdout, plus retain rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_models):
        flip = rng.permutation(n_samples) % 2 == 0  # which samples this model trained on
        for i in range(n_samples):
            group = "forget" if flip[i] else "holdout"
            rows.append(dict(model=k, role="target" if k < n_models // 2 else "shadow",
                             group=group, identity=i // 2, sample_id=f"s{i:02d}",
                             phi=rng.normal(1.5 if flip[i] else 0.0), correct=bool(flip[i])))  # fmt: skip
            rows.append(dict(model=k, role="target" if k < n_models // 2 else "shadow",
                             group="retain", identity=100 + i, sample_id=f"r{i:02d}",
                             phi=rng.normal(), correct=True))  # fmt: skip
    return pd.DataFrame(rows, columns=mia.COLUMNS)


def test_one_diverged_model_of_m_does_not_drop_the_method(tmp_path):
    from clearbench.report.leaderboard import build_leaderboard

    full = synthetic_scores()
    survivors = full[full["model"] != 1]  # model 1 (a target) diverged: no rows (score_models)
    metas = [dict(model_ids=[0, 1, 2, 3], status=["ok", "diverged", "ok", "ok"], rte_seconds=1.0),
             dict(model_ids=[4, 5, 6, 7], status=["ok"] * 4, rte_seconds=2.0)]  # fmt: skip
    summary = report.summarize_family(metas, survivors)
    assert summary["status"] == "ok" and summary["n_diverged"] == 1 and summary["rte_seconds"] == 3
    assert summary["u_lira"] is not None and summary["u_lira"] == mia.score_mia(survivors)["u_lira"]
    # the same model present with NaN phi (e.g. an external table): counted, not scored
    nan = full.assign(phi=np.where(full["model"] == 1, np.nan, full["phi"]))
    ok_metas = [dict(m, status=["ok"] * 4) for m in metas]
    assert report.summarize_family(ok_metas, nan) == summary
    table = report.table2({"m": nan}, None).iloc[0]
    assert table["diverged_models"] == 1 and table["retain_acc"] == summary["retain_acc"]
    # every target gone: nothing to attack, the family is diverged
    no_targets = survivors[survivors["role"] == "shadow"]
    dead = [dict(m, status=["diverged"] * 4) if i == 0 else m for i, m in enumerate(metas)]
    lost = report.summarize_family(dead, no_targets)
    assert lost["status"] == "diverged" and lost["n_diverged"] == 4
    # the leaderboard ranks the method on its survivors and says how many diverged
    paths = []
    for family, (s, m) in {"original": (full, ok_metas), "gold": (full, ok_metas),
                           "scrub": (survivors, metas), "neggrad": (no_targets, dead)}.items():  # fmt: skip
        p = tmp_path / "results/vision" / family / "summary.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(report.summarize_family(m, s)))
        paths.append(str(p))
    out = tmp_path / "leaderboard.csv"
    build_leaderboard([], [], str(out), str(tmp_path / "t"), str(tmp_path / "p"),
                      {"retain_drop": 0.5}, paths, "forget10")  # fmt: skip
    v = pd.read_csv(out).set_index("method")
    assert v.loc["scrub", "status"] == "ok" and v.loc["scrub", "rank"] == 1
    assert v.loc["scrub", "diverged_models"] == 1 and v.loc["gold", "diverged_models"] == 0
    assert v.loc["neggrad", "status"] == "diverged" and pd.isna(v.loc["neggrad", "rank"])
    assert "diverged_models" in (tmp_path / "t/vision_forget10.md").read_text()


def test_figure6_and_table2(originals, data, tmp_path):
    scores = {"original": P.score_models(originals, data, HP)}
    noisy = scores["original"].copy()
    noisy["phi"] = noisy["phi"] + np.random.default_rng(0).normal(size=len(noisy))
    scores["noisy"] = noisy
    path = report.figure6(scores, tmp_path / "fig6.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = report.table2(scores, {"noisy": {"rte_seconds": 1.5, "status": "ok"}})
    assert list(table.columns) == report.TABLE2_COLUMNS and len(table) == 2
    report.write_table2(table, tmp_path / "t2.csv", tmp_path / "t2.md")
    assert pd.read_csv(tmp_path / "t2.csv").shape == (2, len(report.TABLE2_COLUMNS))
    assert (tmp_path / "t2.md").read_text().startswith("| method |")


def test_cli_steps_end_to_end(tables, tmp_path):
    # the Snakemake steps, with the 4 models split into two chunk jobs scored together
    celebs, full, split = tables
    for name, df in (("celebs", celebs), ("full", full), ("split", split)):
        df.to_parquet(tmp_path / f"{name}.parquet")
    hp = json.dumps(P.merge(HP, dict(n_models=4, pretrain=dict(epochs=1), train=dict(epochs=1))))
    d = dict(full=str(tmp_path / "full.parquet"), split=str(tmp_path / "split.parquet"))
    common = ["--full", d["full"], "--split", d["split"], "--hp", hp]
    assert P.main(["pretrain", "--celebs", str(tmp_path / "celebs.parquet"),
                   "--out", str(tmp_path / "pre"), "--hp", hp]) == 0  # fmt: skip
    assert json.loads((tmp_path / "pre" / "metrics.json").read_text())["n_train_ids"] == 3
    for chunk in ("0:2", "2:4"):
        tag = chunk.replace(":", "-")
        assert P.main(["train", *common, "--pretrained", str(tmp_path / "pre"), "--models", chunk,
                       "--out", str(tmp_path / f"orig{tag}.pt")]) == 0  # fmt: skip
        assert P.main(["unlearn", *common, "--state", str(tmp_path / f"orig{tag}.pt"),
                       "--method", "scrub_bio", "--out", str(tmp_path / f"u{tag}.pt"),
                       "--scores", str(tmp_path / f"u{tag}.parquet"),
                       "--meta", str(tmp_path / f"u{tag}.json")]) == 0  # fmt: skip
    # one job scoring both chunks and the chunks scoring themselves give the same table
    assert P.main(["score", *common, "--state", str(tmp_path / "u0-2.pt"), str(tmp_path / "u2-4.pt"),
                   "--out", str(tmp_path / "scores.parquet"),
                   "--metrics", str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert report.main(["collect", "--scores", str(tmp_path / "u0-2.parquet"),
                        str(tmp_path / "u2-4.parquet"), "--meta", str(tmp_path / "u0-2.json"),
                        str(tmp_path / "u2-4.json"), "--out", str(tmp_path / "collected.parquet"),
                        "--summary", str(tmp_path / "c.json")]) == 0  # fmt: skip
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert sorted(scores["model"].unique()) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(scores, pd.read_parquet(tmp_path / "collected.parquet"))
    assert mia.main([str(tmp_path / "scores.parquet"), "--out", str(tmp_path / "mia.json")]) == 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["status"] == "ok" and summary["rte_seconds"] > 0 and summary["n_models"] == 4
    collected = json.loads((tmp_path / "c.json").read_text())
    # collect adds the numbers in the CLEAR authors' convention (and, with --bootstrap, intervals)
    assert collected.pop("authors").keys() >= {"u_lira", "u_mia"} and collected == summary
    assert report.main(["report", "--scores", f"scrub_bio={tmp_path / 'scores.parquet'}",
                        "--metrics", f"scrub_bio={tmp_path / 'm.json'}",
                        "--figure", str(tmp_path / "fig6.png"),
                        "--out", str(tmp_path / "t2.csv")]) == 0  # fmt: skip
    assert (tmp_path / "t2.md").exists() and (tmp_path / "fig6.png").exists()


def test_unlink_edits_only_its_layer_and_blinds_it_to_each_models_own_forget_side(originals, data):
    """Training-free: each model's `proj` loses the subspace of its own forget side's photos
    (models 0 and 5 sit on different sides), nothing else moves, status and RTE are set."""
    k = 4
    hp = P.merge(HP, dict(unlearn=dict(method_hp=dict(unlink=dict(k=k, n_samples=6)))))
    two = originals.take([0, 5])
    out = P.unlearn_models(two, data, "unlink", hp)
    assert out.meta["status"] == ["ok", "ok"] and 0 < out.meta["rte_seconds"] < 10
    assert [k for k in two.params if not torch.equal(two.params[k], out.params[k])] == [
        "proj.weight"
    ]
    a = P.assignment_for(data, hp)
    for r, model_id in enumerate(two.model_ids):
        delta = out.params["proj.weight"][r] - two.params["proj.weight"][r]
        assert torch.linalg.matrix_rank(delta).item() <= k
        before, after = ens.unstack(two, r).eval(), ens.unstack(out, r).eval()
        pooled = []
        before.proj.register_forward_pre_hook(lambda m, i, seen=pooled: seen.append(i[0]))
        with torch.no_grad():
            before(data.pixels[np.flatnonzero(a.side[model_id][data.labels])])
            x = pooled[0]
            kept = (after.proj(x) - after.proj.bias).norm() / (
                before.proj(x) - before.proj.bias
            ).norm()
        # the subspace holds most of the side's pooled features (k of 64 dims), not all of them
        assert kept < 0.5, kept
    assert not torch.equal(out.params["proj.weight"][0] - two.params["proj.weight"][0],
                           out.params["proj.weight"][1] - two.params["proj.weight"][1])  # fmt: skip
