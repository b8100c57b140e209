import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from clearbench.vision import mia

KEYS = {"u_lira", "u_mia", "forget_acc", "holdout_acc", "retain_acc"}


def make_scores(mu_in, mu_out, n_models=16, k=40, offset_sd=0.0, seed=0):
    """Synthetic scores with the DESIGN.md section 8 layout.

    Models 0..M/2-1 train on F, M/2..M-1 on H; per side the first half are targets, the rest
    shadows. Each example has its own offset; phi = offset + (mu_in if IN else mu_out) + N(0, 1).
    """
    rng = np.random.default_rng(seed)
    f_ids, h_ids = [f"f{i}" for i in range(k)], [f"h{i}" for i in range(k)]
    offset = dict(zip(f_ids + h_ids, rng.normal(0, offset_sd, 2 * k), strict=True))
    rows = []
    for m in range(n_models):
        f_side = m < n_models // 2
        role = "target" if m % (n_models // 2) < n_models // 4 else "shadow"
        for sid in f_ids + h_ids:
            is_in = sid.startswith("f") == f_side
            phi = offset[sid] + (mu_in if is_in else mu_out) + rng.normal()
            group = "forget" if is_in else "holdout"
            rows.append((m, role, group, sid, sid, phi, bool(rng.random() < 0.5)))
        for i in range(5):
            rows.append((m, role, "retain", f"r{i}", f"r{i}", rng.normal(3, 1), True))
    return pd.DataFrame(rows, columns=mia.COLUMNS)


def test_indistinguishable_is_chance():
    df = make_scores(0.0, 0.0)
    assert abs(mia.u_lira(df) - 0.5) < 0.08
    assert abs(mia.u_mia(df) - 0.5) < 0.08


def test_separated_is_exposed():
    # 8 shadows per side: with 4, the median/MAD fit is noisy enough to dip just under 0.95
    df = make_scores(3.0, -3.0, n_models=32)
    assert mia.u_lira(df) >= 0.95
    assert mia.u_mia(df) >= 0.95


def test_per_example_beats_population():
    # each example has its own baseline (sd 5) that swamps the shared IN shift of 3
    df = make_scores(3.0, 0.0, offset_sd=5.0, seed=1)
    lira, pop = mia.u_lira(df), mia.u_mia(df)
    assert lira >= 0.8 and lira > pop + 0.15, (lira, pop)


def test_median_mad_resists_outlier():
    ins = [2.0, 2.1, 1.9, 2.05, 1.95, 200.0]  # one wild IN shadow
    outs = [0.0, 1.0, -1.0, 0.5, -0.5]
    rows = [(m, "shadow", "forget", 0, "x", v, True) for m, v in enumerate(ins)]
    rows += [(10 + m, "shadow", "holdout", 0, "x", v, True) for m, v in enumerate(outs)]
    rows += [
        (20, "target", "forget", 0, "x", 1.8, True),
        (21, "target", "holdout", 0, "x", 0.0, True),
    ]
    df = pd.DataFrame(rows, columns=mia.COLUMNS)
    # a mean/std fit would call the forget target (phi 1.8) OUT ...
    mean_std_in = norm.logpdf(1.8, np.mean(ins), np.std(ins)) > norm.logpdf(
        1.8, np.mean(outs), np.std(outs)
    )
    assert not mean_std_in
    # ... the median/MAD fit gets both targets right
    assert mia.u_lira(df) == 1.0


def test_accuracies_targets_only():
    rows = [
        (0, "target", "forget", 1, "a", 0.0, True),
        (0, "target", "forget", 1, "b", 0.0, False),
        (1, "target", "forget", 1, "a", 0.0, False),
        (0, "target", "holdout", 2, "c", 0.0, True),
        (0, "target", "holdout", 2, "d", 0.0, False),
        (0, "target", "retain", 3, "e", 0.0, True),
        (1, "target", "retain", 3, "e", 0.0, True),
        (1, "target", "retain", 3, "f", 0.0, True),
        (1, "target", "retain", 3, "g", 0.0, False),
    ]
    rows += [(2, "shadow", g, 9, "z", 0.0, g != "retain") for g in ("forget", "holdout", "retain")]
    acc = mia.accuracies(pd.DataFrame(rows, columns=mia.COLUMNS))
    assert acc == {"forget_acc": 1 / 3, "holdout_acc": 0.5, "retain_acc": 0.75}


def test_unscorable_gives_none():
    df = make_scores(1.0, 0.0, n_models=8, k=3)
    out = mia.score_mia(df[df["role"] == "target"])  # no shadows at all
    assert out["u_lira"] is None and out["u_mia"] is None and out["retain_acc"] == 1.0


def test_phi_from_cosine():
    assert mia.phi_from_cosine(np.array([0.5]))[0] == pytest.approx(0.0)
    assert mia.phi_from_cosine(0.8) == pytest.approx(np.log(4.0))
    cos = np.linspace(-1.0, 1.0, 201)
    phi = mia.phi_from_cosine(cos)
    assert np.isfinite(phi).all() and (np.diff(phi) >= 0).all()
    assert phi[0] == phi[100] == pytest.approx(np.log(1e-6 / (1 - 1e-6)))  # cos <= 0 clipped


def test_cli(tmp_path, capsys):
    path, out = tmp_path / "scores.parquet", tmp_path / "sub" / "mia.json"
    df = make_scores(1.0, 0.0, n_models=8, k=10)
    df.to_parquet(path)
    assert mia.main([str(path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == KEYS and all(0.0 <= v <= 1.0 for v in result.values())
    assert mia.main([str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == result

    df.drop(columns="phi").to_parquet(path)
    assert mia.main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "phi" in err[0]

    df.assign(role="teacher").to_parquet(path)
    assert mia.main([str(path)]) == 2
    assert "role" in capsys.readouterr().err
    assert mia.main([str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet" in capsys.readouterr().err


def test_authors_phi_floors_at_log_1e_45_and_keeps_the_rest():
    cos = np.array([-0.3, 0.0, 0.25, 0.5, 0.9, 1.0])
    ours = mia.phi_from_cosine(cos)
    theirs = mia.authors_phi(ours)
    s = np.clip(cos, 0, 1)  # the authors' cv/attack.py
    expected = np.log(s + 1e-45) - np.log(1 - s + 1e-45)
    np.testing.assert_allclose(theirs, expected, rtol=1e-9)
    assert theirs[0] == pytest.approx(np.log(1e-45)) and ours[0] == pytest.approx(
        -13.8155, abs=1e-4
    )


def test_intervals_cover_the_point_and_shrink_with_more_pairs():
    few, many = make_scores(1.0, 0.0, k=10, seed=2), make_scores(1.0, 0.0, k=80, seed=2)
    width = {}
    for name, df in (("few", few), ("many", many)):
        point, iv = mia.score_mia(df), mia.intervals(df, 400, seed=0)
        for key in KEYS:
            assert iv[f"{key}_lo"] <= point[key] <= iv[f"{key}_hi"], (name, key)
        width[name] = iv["u_lira_hi"] - iv["u_lira_lo"]
    assert width["many"] < 0.6 * width["few"]  # 8x the pairs: about 1/sqrt(8) the width
    assert mia.intervals(few, 100, seed=1) == mia.intervals(few, 100, seed=1)


def test_cli_bootstrap_and_convention(tmp_path):
    df = make_scores(1.0, 0.0)
    df.loc[df.index[:50], "phi"] = mia.phi_from_cosine(0.0)  # cos <= 0: the floors differ
    path = tmp_path / "scores.parquet"
    df.to_parquet(path)
    out = tmp_path / "ours.json"
    assert mia.main([str(path), "--out", str(out), "--bootstrap", "50"]) == 0
    ours = json.loads(out.read_text())
    assert set(ours) == KEYS | {f"{k}_{s}" for k in KEYS for s in ("lo", "hi")}
    assert mia.main([str(path), "--out", str(out), "--convention", "clear-authors"]) == 0
    theirs = json.loads(out.read_text())
    assert set(theirs) == KEYS and theirs["forget_acc"] == ours["forget_acc"]
    assert theirs == mia.score_mia(df.assign(phi=mia.authors_phi(df["phi"])))


def test_family_summary_carries_intervals_and_the_authors_numbers(tmp_path):
    from clearbench.vision import report

    df = make_scores(1.0, 0.0)
    df.loc[df.index[::7], "phi"] = mia.phi_from_cosine(0.0)
    path, meta = tmp_path / "chunk.parquet", tmp_path / "meta.json"
    df.to_parquet(path)
    meta.write_text(json.dumps({"status": ["ok"] * 16, "rte_seconds": 1.0}))
    summary = report.collect([str(path)], [str(meta)], str(tmp_path / "s.parquet"),
                             str(tmp_path / "s.json"), {"n": 100, "seed": 0, "level": 0.9})  # fmt: skip
    assert summary["u_lira_lo"] <= summary["u_lira"] <= summary["u_lira_hi"]
    theirs = mia.score_mia(df.assign(phi=mia.authors_phi(df["phi"])))
    assert {k: summary["authors"][k] for k in KEYS} == theirs
    assert summary["authors"]["u_lira_lo"] <= theirs["u_lira"] <= summary["authors"]["u_lira_hi"]
    assert json.loads((tmp_path / "s.json").read_text()) == summary
