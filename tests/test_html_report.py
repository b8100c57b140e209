"""The HTML report: built from a small fake results folder, then opened in headless Chromium
(the leaderboard table and a plot must render; the screenshot is kept as a CI artifact)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from clearbench.cli import main
from clearbench.report.html import build_html_report

ROOT = Path(__file__).resolve().parents[1]
ROWS = 3


@pytest.fixture
def results(tmp_path) -> Path:
    res = tmp_path / "results"
    (res / "tables").mkdir(parents=True)
    (res / "plots").mkdir()
    pd.DataFrame(
        {"track": ["text"] * ROWS, "method": ["original", "gold", "ga"],
         "forget": [0.62, 0.16, 0.0], "status": ["ok", "ok", "failed-retain"]}
    ).to_csv(res / "leaderboard.csv", index=False)  # fmt: skip
    (res / "tables" / "table1_text.md").write_text(
        "| method | forget |\n|---|---|\n| original | 0.624 |\n| gold | 0.157 |\n"
    )
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["original", "gold", "ga"], [0.62, 0.16, 0.0], color="tab:red")
    fig.savefig(res / "plots" / "text_forget10.png")
    plt.close(fig)
    return res


def leaderboard_rows(page: str) -> int:
    """Body rows of <table id="leaderboard"> in the page or in Chromium's DOM."""
    table = re.search(r'<table[^>]*id="leaderboard".*?</table>', page, re.S)
    assert table, "no leaderboard table"
    return table.group(0).split("<tbody>")[-1].count("<tr")


def build(res: Path) -> Path:
    out = res / "report.html"
    summary = build_html_report(
        res / "leaderboard.csv", out, res / "tables", res / "plots", vision=res / "vision"
    )
    assert summary["tables"] == 1 and summary["images"] == 1
    assert len(summary["skipped"]) == 3  # no vision folder, no CLEAR data card nor sheets
    return out


def test_report_holds_the_leaderboard_tables_and_embedded_plots(results):
    page = build(results).read_text()
    assert leaderboard_rows(page) == ROWS and "<td>failed-retain</td>" in page
    assert page.count("<table") == 2  # the leaderboard and table1_text
    assert page.count('src="data:image/png;base64,') == 1
    assert "http://" not in page and "https://" not in page  # self-contained, opens offline
    assert "skipped: no" in page  # missing vision / CLEAR folders are a note, not an error


def test_each_clip_split_is_a_section_with_its_table_and_plot(results):
    split = results / "clip" / "forget10"
    split.mkdir(parents=True)
    (split / "table.md").write_text("| model | target_acc_after |\n|---|---|\n| emb | 0.000 |\n")
    (split / "emb.json").write_text("{}")  # a model summary beside it is not a table
    (results / "plots" / "text_forget10.png").rename(split / "table.png")
    out = results / "report.html"
    summary = build_html_report(results / "leaderboard.csv", out, results / "tables",
                                clip=[split, results / "clip" / "forget05"])  # fmt: skip
    page = out.read_text()
    assert summary["tables"] == 2 and summary["images"] == 1
    assert "Clip track, forget10" in page and "<td>emb</td>" in page
    assert "Clip track, forget05" in summary["skipped"]  # a missing split is a note


def test_missing_leaderboard_is_one_line_naming_it(tmp_path, capsys):
    rc = main(["report-html", "--leaderboard", str(tmp_path / "nope.csv"),
               "--out", str(tmp_path / "r.html")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nope.csv" in err
    assert not (tmp_path / "r.html").exists()


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        reason = "chromium not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the rendering check")
        pytest.skip(reason)
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_report_renders_in_headless_chromium(results, tmp_path):
    url = build(results).as_uri()
    dom = chromium(["--dump-dom", url], tmp_path / "profile").stdout
    assert leaderboard_rows(dom) == ROWS
    # the page's load handler counts images that decoded (naturalWidth > 0)
    assert 'data-images-rendered="1"' in dom, dom[dom.find("<body") :][:200]

    shot = tmp_path / "report.png"
    chromium([f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path / "profile2")
    assert shot.exists(), "chromium wrote no screenshot"
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1280) and pixels[..., :3].std() > 0.05, "blank screenshot"
    artifact = Path(os.environ.get("CLEARBENCH_ARTIFACTS", ROOT / "tests" / "artifacts"))
    artifact.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifact / "report_screenshot.png")
