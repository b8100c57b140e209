"""Leaderboard: columns, the failed-retain rule and the ranking."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from clearbench.report.leaderboard import COLUMNS, build_leaderboard


def write(tmp, name, real, retain, forget, status="ok", fq=-1.0, track="text"):
    m = tmp / f"results/metrics/{track}/forget10" / f"{name}.json"
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text(json.dumps({"real": real, "retain": retain, "forget": forget,
                             "log10_forget_quality": fq, "forget_quality_js": 0.5}))  # fmt: skip
    d = tmp / "models" / track / name
    d.mkdir(parents=True)
    (d / "model.json").write_text(json.dumps({"status": status, "rte_seconds": 2.0}))
    return str(m), str(d)


def test_rules_and_both_rankings(tmp_path):
    entries = [
        write(tmp_path, "original", 0.8, 0.9, 0.9, fq=-5),
        write(tmp_path, "gold", 0.8, 0.9, 0.2, fq=0.0),
        write(tmp_path, "ga-nol1-text", 0.1, 0.1, 0.0),  # forgets everything: retain collapsed
        write(tmp_path, "kl-nol1-text", 0.2, 0.8, 0.05, fq=-0.5),  # Real collapsed only
        write(tmp_path, "gd-nol1-text", 0.7, 0.8, 0.4, fq=-2.0),
        write(tmp_path, "gd-l1-text", 0.7, 0.7, 0.3, fq=-2.0),  # |0.3 - 0.2| < |0.4 - 0.2|
        write(tmp_path, "npo-nol1-text", 0.7, 0.8, 0.6, fq=-1.0),  # closest to gold in quality
        write(tmp_path, "retain_ft-l1-text", None, None, None, status="diverged"),
    ]
    out = tmp_path / "leaderboard.csv"
    build_leaderboard([m for m, _ in entries], [d for _, d in entries], str(out),
                      str(tmp_path / "tables"), str(tmp_path / "plots"),
                      {"retain_drop": 0.5, "real_drop": 0.5})  # fmt: skip
    board = pd.read_csv(out)
    assert list(board.columns) == COLUMNS
    by = board.set_index(board.method + "/" + board.l1.astype(str))
    assert by.loc["ga/False", "status"] == "failed-retain" and pd.isna(by.loc["ga/False", "rank"])
    assert by.loc["kl/False", "status"] == "failed-real" and pd.isna(by.loc["kl/False", "rank"])
    assert by.loc["retain_ft/True", "status"] == "diverged"
    # rank: forget quality, then closeness to gold's forget metric
    assert [by.loc[k, "rank"] for k in ("npo/False", "gd/True", "gd/False")] == [1, 2, 3]
    # rank_paper: the lowest forget wins among what keeps retain (kl's broken Real included)
    assert [by.loc[k, "rank_paper"] for k in ("kl/False", "gd/True", "gd/False", "npo/False")] == [
        1, 2, 3, 4,
    ]  # fmt: skip
    assert board[board.method.isin(["original", "gold"])][["rank", "rank_paper"]].isna().all().all()
    assert (tmp_path / "plots/text_forget10.png").stat().st_size > 1000
    assert "| gd |" in (tmp_path / "tables/text_forget10.md").read_text()
    table1 = pd.read_csv(tmp_path / "tables/table1_text.csv")
    assert list(table1.method[:2]) == ["original", "gold"]
    # the tables keep the paper's gray-out: kl's Real collapse is not one
    assert table1.set_index("method").loc["kl", "status"] == "ok"


def test_paper_tables_3_and_4_and_the_loss_curves(tmp_path):
    entries = [write(tmp_path, name, 0.5, 0.5, 0.3, track="vlm") for name in (
        "original", "gold", "llmu-nol1-both", "llmu-l1-both", "llmu-nol1-text",
        "llmu-nol1-visual", "ga-nol1-both", "ga-l1-both",
    )]  # fmt: skip
    models = []
    for (m, d), name in zip(entries, ["original", "gold", "llmu", "llmu", "llmu", "llmu", "ga", "ga"],
                            strict=True):  # fmt: skip
        tag = Path(m).stem.split("-", 1)[-1]
        run = tmp_path / "results/models/vlm/unlearn" / name / "forget10" / tag
        if name not in ("original", "gold"):
            run.mkdir(parents=True)
            (run / "model.json").write_text((Path(d) / "model.json").read_text())
            pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5], "forget": [1.0, 0.5]}).to_csv(
                run / "losses.csv", index=False
            )
            d = str(run)
        models.append(d)
    build_leaderboard([m for m, _ in entries], models, str(tmp_path / "lb.csv"),
                      str(tmp_path / "tables"), str(tmp_path / "plots"), {"retain_drop": 0.5})  # fmt: skip
    t3 = pd.read_csv(tmp_path / "tables/table3_modality.csv")
    assert list(zip(t3.method, t3.modality.fillna("-"), strict=True)) == [
        ("original", "-"), ("gold", "-"), ("llmu", "both"), ("llmu", "text"), ("llmu", "visual"),
    ]  # fmt: skip
    t4 = pd.read_csv(tmp_path / "tables/table4_l1.csv")
    assert list(t4.method) == ["original", "gold", "llmu", "llmu", "ga", "ga"]
    assert set(t4.modality.dropna()) == {"both"} and "status" in t4.columns
    assert "| llmu |" in (tmp_path / "tables/table4_l1.md").read_text()
    assert (tmp_path / "plots/losses_vlm_forget10.png").stat().st_size > 5000


def write_vision(tmp, family, retain_acc, u_lira, status="ok"):
    s = tmp / "results/vision" / family / "summary.json"
    s.parent.mkdir(parents=True)
    s.write_text(json.dumps({"forget_acc": 0.5, "holdout_acc": 0.4, "retain_acc": retain_acc,
                             "u_lira": u_lira, "u_mia": u_lira, "rte_seconds": 3.0,
                             "status": status}))  # fmt: skip
    return str(s)


def test_vision_rows_rank_by_lira_closeness_among_methods_that_keep_retain(tmp_path):
    vision = [
        write_vision(tmp_path, "original", 0.9, 0.95),
        write_vision(tmp_path, "gold", 0.9, 0.5),
        write_vision(tmp_path, "neggrad", 0.2, 0.5),  # perfect attack score, retain destroyed
        write_vision(tmp_path, "scrub", 0.8, 0.42),  # |0.42 - 0.5| = 0.08: below 0.5 counts too
        write_vision(tmp_path, "twins", 0.85, 0.6),
        write_vision(tmp_path, "rmu", 0.9, 0.7),
        write_vision(tmp_path, "dpo", 0.9, None, status="diverged"),
        write_vision(tmp_path, "llmu", 0.6, 0.5),  # above 0.5 x 0.9, below the vision 0.8 x 0.9
    ]
    text = [write(tmp_path, "original", 0.8, 0.9, 0.9), write(tmp_path, "gold", 0.8, 0.9, 0.2)]
    out = tmp_path / "leaderboard.csv"
    build_leaderboard([m for m, _ in text], [d for _, d in text], str(out),
                      str(tmp_path / "tables"), str(tmp_path / "plots"),
                      {"retain_drop": 0.5, "vision_retain_drop": 0.8}, vision, "forget10")  # fmt: skip
    board = pd.read_csv(out)
    v = board[board.track == "vision"].set_index("method")
    assert len(v) == 8 and (v.split == "forget10").all()
    for failed in ("neggrad", "llmu"):
        assert v.loc[failed, "status"] == "failed-retain" and pd.isna(v.loc[failed, "rank"])
    assert v.loc["dpo", "status"] == "diverged"
    assert [v.loc[m, "rank"] for m in ("scrub", "twins", "rmu")] == [1, 2, 3]
    assert v.loc[["original", "gold"], "rank"].isna().all()
    assert v.loc["scrub", "modality"] == "visual" and pd.isna(v.loc["gold", "modality"])
    # the text rows keep their own rules next to the vision rows
    assert board[board.track == "text"]["rank"].isna().all()
    assert "u_lira" in (tmp_path / "tables/vision_forget10.md").read_text()
    assert (tmp_path / "plots/vision_forget10.png").stat().st_size > 1000


def test_a_diverged_method_leaves_the_other_rows_unchanged(tmp_path):
    def board(folder, diverged):
        entries = [
            write(folder, "original", 0.8, 0.9, 0.9, fq=-5),
            write(folder, "gold", 0.8, 0.9, 0.2, fq=0.0),
            write(folder, "gd-nol1-text", 0.7, 0.8, 0.4, fq=-2.0),
            write(folder, "npo-nol1-text", 0.7, 0.8, 0.6, fq=-1.0),
            write(folder, "ga-nol1-text", 0.7, 0.8, 0.3, fq=-0.5),  # the best, unless diverged
        ]
        if diverged:  # what unlearn writes for a huge learning rate: metrics of a NaN model
            m, d = entries[-1]
            Path(m).write_text(json.dumps({"real": None, "retain": None, "forget": None}))
            Path(d, "model.json").write_text(json.dumps({"status": "diverged", "rte_seconds": 1}))
        out = folder / "leaderboard.csv"
        build_leaderboard([m for m, _ in entries], [d for _, d in entries], str(out),
                          str(folder / "tables"), str(folder / "plots"),
                          {"retain_drop": 0.5, "real_drop": 0.5})  # fmt: skip
        return pd.read_csv(out).set_index("method")

    clean, bad = board(tmp_path / "clean", False), board(tmp_path / "bad", True)
    assert clean.loc["ga", "rank"] == 1 and bad.loc["ga", "status"] == "diverged"
    assert pd.isna(bad.loc["ga", "rank"]) and pd.isna(bad.loc["ga", "rank_paper"])
    others = ["original", "gold", "gd", "npo"]
    cols = [c for c in COLUMNS if c not in ("method", "rank", "rank_paper")]
    pd.testing.assert_frame_equal(clean.loc[others, cols], bad.loc[others, cols])
    # the others keep their order; only the diverged method's place is gone
    assert list(bad.loc[["npo", "gd"], "rank"]) == [1, 2]
    assert list(clean.loc[["npo", "gd"], "rank"]) == [2, 3]


def write_clip(tmp, name, target, other, real, rte=2.0, status="ok"):
    path = tmp / "results/clip/forget10" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"target_acc": target, "other_acc": other, "real_faces_acc": real,
                                "rte_seconds": rte, "status": status}))  # fmt: skip
    return str(path)


def test_clip_rows_rank_by_closeness_to_gold_and_training_free_speedup_is_tabulated(tmp_path):
    clip = [
        write_clip(tmp_path, "original", 0.95, 0.9, 0.9, rte=30.0),
        write_clip(tmp_path, "gold", 0.05, 0.9, 0.9, rte=25.0),
        write_clip(tmp_path, "lipschitz", 0.10, 0.88, 0.86, rte=8.0),
        write_clip(tmp_path, "emb", 0.0, 0.5, 0.6, rte=6.0),  # over-forgets, breaks the others
        write_clip(tmp_path, "amnesiac", 0.60, 0.89, 0.9, rte=4.0),
        write_clip(tmp_path, "unlink", 0.30, 0.85, 0.88, rte=0.02),
    ]
    out = tmp_path / "leaderboard.csv"
    build_leaderboard([], [], str(out), str(tmp_path / "tables"), str(tmp_path / "plots"),
                      {"retain_drop": 0.5, "clip_drop": 0.9}, clip=clip)  # fmt: skip
    c = pd.read_csv(out).set_index("method")
    assert (c.track == "clip").all() and c.loc["lipschitz", "real_acc"] == 0.86
    assert c.loc["emb", "status"] == "failed-retain" and pd.isna(c.loc["emb", "rank"])
    # |forget - gold forget|: lipschitz 0.05, unlink 0.25, amnesiac 0.55
    assert [c.loc[m, "rank"] for m in ("lipschitz", "unlink", "amnesiac")] == [1, 2, 3]
    rte = pd.read_csv(tmp_path / "tables/rte_training_free.csv")
    (row,) = rte.to_dict("records")
    assert row["method"] == "unlink" and row["fastest_trained"] == "amnesiac"
    assert row["speedup"] == pytest.approx(200.0)  # 4.0 s / 0.02 s
    assert "lipschitz" in (tmp_path / "tables/clip_forget10.md").read_text()


def write_attacks(tmp, track, name, **values):
    path = tmp / f"results/attacks/{track}/forget10/{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return str(path)


def test_attack_columns_land_on_their_own_rows_with_a_table_and_a_plot(tmp_path):
    text = [
        write(tmp_path, "original", 0.8, 0.9, 0.9),
        write(tmp_path, "gold", 0.8, 0.9, 0.2, fq=0.0),
        write(tmp_path, "npo-nol1-text", 0.7, 0.8, 0.25),
        write(tmp_path, "npo-l1-text", 0.7, 0.8, 0.5),  # not attacked
    ]
    attacks = [
        write_attacks(tmp_path, "text", "original", forget_none=0.88, relearn_forget=0.9),
        write_attacks(tmp_path, "text", "gold", forget_none=0.21, relearn_forget=0.3),
        write_attacks(
            tmp_path,
            "text",
            "npo-nol1-text",
            forget_none=0.24,
            forget_probe=0.3,
            forget_q8=None,  # a kind the DAG did not run (default: no q8) is null in every file
            forget_q4=0.4,
            relearn_forget=0.8,
            relearn_retain_forget=0.6,
        ),  # fmt: skip
    ]
    vision = [write_vision(tmp_path, f, 0.9, u) for f, u in (("original", 0.9), ("gold", 0.5),
                                                             ("unlink", 0.55))]  # fmt: skip
    relearn = []
    for family, u in (("original", 0.88), ("unlink", 0.8)):
        path = tmp_path / "results/vision" / family / "relearn.json"
        path.write_text(json.dumps({"u_lira": u}))
        relearn.append(str(path))
    out = tmp_path / "leaderboard.csv"
    build_leaderboard([m for m, _ in text], [d for _, d in text], str(out),
                      str(tmp_path / "tables"), str(tmp_path / "plots"), {"retain_drop": 0.5},
                      vision, "forget10", attacks=attacks, relearn=relearn)  # fmt: skip
    board = pd.read_csv(out)
    rows = board[board.track == "text"]
    rows = rows.set_index(rows.method + "/" + rows.l1.astype(str))
    npo = rows.loc["npo/False"]
    assert (npo.forget_unattacked, npo.forget_probe, npo.forget_q4) == (0.24, 0.3, 0.4)
    assert pd.isna(npo.forget_q8)
    assert (npo.relearn_forget, npo.relearn_retain_forget) == (0.8, 0.6)
    assert rows.loc["npo/True", ["forget_unattacked", "relearn_forget"]].isna().all()
    assert rows[rows.method == "gold"].relearn_forget.iloc[0] == 0.3
    v = board[board.track == "vision"].set_index("method")
    assert v.loc["unlink", "relearn_u_lira"] == 0.8 and pd.isna(v.loc["gold", "relearn_u_lira"])
    table = pd.read_csv(tmp_path / "tables/attacks_text_forget10.csv")
    assert list(table.method) == ["original", "gold", "npo"]  # the attacked models only
    assert list(pd.read_csv(tmp_path / "tables/attacks_vision_forget10.csv").method) == [
        "original", "unlink"
    ]  # fmt: skip
    for track in ("text", "vision"):
        assert (tmp_path / f"plots/attacks_{track}_forget10.png").stat().st_size > 1000


def test_table4_only_where_the_dag_ran_l1(tmp_path):
    from clearbench.report.leaderboard import paper_tables

    board = pd.DataFrame({
        "track": "vlm", "split": "forget10", "method": ["original", "gold", "ga", "npo"],
        "l1": [None, None, False, False], "modality": [None, None, "both", "both"],
        "status_paper": "ok",
    })  # fmt: skip
    for col in COLUMNS:
        board[col] = board.get(col, 0.5)
    assert "table4_l1" not in paper_tables(board)  # default: no l1 runs, no Table 4
    board.loc[3, "l1"] = True
    assert list(paper_tables(board)["table4_l1"].method) == ["original", "gold", "ga", "npo"]


def test_ties_intervals_and_the_authors_tables(tmp_path):
    def entry(name, forget, fq, fq_lo, fq_hi, authors_fq):
        m, d = write(tmp_path, name, 0.8, 0.8, forget, fq=fq)
        metrics = json.loads(Path(m).read_text()) | {
            "forget_lo": forget - 0.05, "forget_hi": forget + 0.05, "retain_lo": 0.75,
            "retain_hi": 0.85, "log10_forget_quality_lo": fq_lo, "log10_forget_quality_hi": fq_hi,
        }  # fmt: skip
        Path(m).write_text(json.dumps(metrics))
        a = tmp_path / "results/metrics_authors/text/forget10" / f"{name}.json"
        a.parent.mkdir(parents=True, exist_ok=True)
        a.write_text(json.dumps(metrics | {"log10_forget_quality": authors_fq}))
        return m, d, str(a)

    entries = [
        entry("original", 0.9, -5.0, -6.0, -4.0, -5.0),
        entry("gold", 0.2, 0.0, -0.2, 0.0, 0.0),
        entry("npo-nol1-text", 0.3, -1.0, -1.5, -0.5, -3.0),  # overlaps gd's interval
        entry("gd-nol1-text", 0.35, -1.2, -1.8, -0.9, -1.0),  # apart from ga's
        entry("ga-nol1-text", 0.4, -3.0, -3.5, -2.5, -2.0),
    ]
    m, d, a = (list(x) for x in zip(*entries, strict=True))
    build_leaderboard(m, d, str(tmp_path / "lb.csv"), str(tmp_path / "tables"),
                      str(tmp_path / "plots"), {"retain_drop": 0.5}, authors=a)  # fmt: skip
    board = pd.read_csv(tmp_path / "lb.csv").set_index("method")
    assert list(board.loc[["npo", "gd", "ga"], "rank"]) == [1, 2, 3]
    assert board.loc["npo", "tie_with_next"] == True  # noqa: E712
    assert board.loc["gd", "tie_with_next"] == False  # noqa: E712
    assert pd.isna(board.loc["ga", "tie_with_next"]) and pd.isna(board.loc["gold", "tie_with_next"])
    assert board.loc["npo", "forget_lo"] == pytest.approx(0.25)
    md = (tmp_path / "tables/text_forget10.md").read_text()
    assert "| 0.300 [0.250, 0.350] |" in md and "forget_lo" not in md.splitlines()[0]
    # the authors' convention ranks by their forget quality: gd, ga, npo
    theirs = pd.read_csv(tmp_path / "tables/authors/text_forget10.csv").set_index("method")
    assert list(theirs.loc[["gd", "ga", "npo"], "rank"]) == [1, 2, 3]
    assert (tmp_path / "tables/authors/table1_text.md").exists()
    assert (tmp_path / "plots/intervals_text_forget10.png").stat().st_size > 5000
