"""Leaderboard: columns, the failed-retain rule and the ranking."""

from __future__ import annotations

import json

import pandas as pd

from clearbench.report.leaderboard import COLUMNS, build_leaderboard


def write(tmp, name, real, retain, forget, status="ok", fq=-1.0):
    m = tmp / "results/metrics/text/forget10" / f"{name}.json"
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text(json.dumps({"real": real, "retain": retain, "forget": forget,
                             "log10_forget_quality": fq, "forget_quality_js": 0.5}))  # fmt: skip
    d = tmp / "models" / name
    d.mkdir(parents=True)
    (d / "model.json").write_text(json.dumps({"status": status, "rte_seconds": 2.0}))
    return str(m), str(d)


def test_rules_and_rank(tmp_path):
    entries = [
        write(tmp_path, "original", 0.8, 0.9, 0.9, fq=-5),
        write(tmp_path, "gold", 0.8, 0.9, 0.2, fq=0.0),
        write(tmp_path, "ga-nol1-text", 0.1, 0.1, 0.0),  # forgets everything: retain collapsed
        write(tmp_path, "gd-nol1-text", 0.7, 0.8, 0.4),
        write(tmp_path, "gd-l1-text", 0.7, 0.7, 0.3),
        write(tmp_path, "retain_ft-l1-text", None, None, None, status="diverged"),
    ]
    out = tmp_path / "leaderboard.csv"
    build_leaderboard([m for m, _ in entries], [d for _, d in entries], str(out),
                      str(tmp_path / "tables"), str(tmp_path / "plots"), {"retain_drop": 0.5})  # fmt: skip
    board = pd.read_csv(out)
    assert list(board.columns) == COLUMNS
    by = board.set_index(board.method + "/" + board.l1.astype(str))
    assert by.loc["ga/False", "status"] == "failed-retain" and pd.isna(by.loc["ga/False", "rank"])
    assert by.loc["retain_ft/True", "status"] == "diverged"
    assert by.loc["gd/True", "rank"] == 1 and by.loc["gd/False", "rank"] == 2, (
        "lower forget ranks first"
    )
    assert board[board.method.isin(["original", "gold"])]["rank"].isna().all()
    assert (tmp_path / "plots/text_forget10.png").stat().st_size > 1000
    assert "| gd |" in (tmp_path / "tables/text_forget10.md").read_text()
