"""DVC on the smoke profile, as a user runs it: the whole DAG from clean, then nothing to do; one
method's parameter reruns that method's stages and the report only; switching it back restores the earlier results from the run-cache; a push
to a local remote, then a fresh clone and a pull, leave Snakemake and DVC with nothing to do; a
direct Snakemake run recorded with `dvc commit` leaves `dvc repro` with nothing to do."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clearbench import dag
from tests.conftest import ROOT
from tests.test_html_report import chromium, leaderboard_rows

pytestmark = pytest.mark.slow
PROJECT = ["Snakefile", "workflow", "config", "src", "params.yaml", ".dvcignore", ".gitignore",
           "environment.yml", "pyproject.toml"]  # fmt: skip
ENV = os.environ | {
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}  # fmt: skip


def sh(cwd: Path, *cmd: str, timeout: int = 900) -> str:
    run = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(cmd)}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


def snakemake(cwd: Path, *args: str) -> str:
    return sh(cwd, sys.executable, "-m", "snakemake", *args)


def dvc(cwd: Path, *args: str) -> str:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def ran_stages(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def set_dpo(project: Path, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["unlearn"]["method_hp"]["dpo"] |= values
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def files(project: Path, folder: str, times: bool = True) -> dict[str, tuple[bytes, int]]:
    return {
        str(f.relative_to(project)): (f.read_bytes(), f.stat().st_mtime_ns if times else 0)
        for f in sorted((project / folder).rglob("*"))
        if f.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The smoke profile as a DVC project, reproduced once."""
    root = tmp_path_factory.mktemp("dvc") / "project"
    root.mkdir()
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(source, root / name, ignore=ignore)
        else:
            shutil.copy2(source, root / name)
    sh(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    sh(root, sys.executable, "-m", "clearbench", "dvc-yaml", "--profile", "config/smoke.yaml")
    return root


@pytest.fixture(scope="module")
def first_repro(project) -> str:
    log = dvc(project, "repro")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "smoke under DVC")
    return log


def test_repro_from_clean_builds_every_stage_and_the_leaderboard(project, first_repro):
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert ran_stages(first_repro) == set(stages)
    board = pd.read_csv(project / "results/leaderboard.csv")
    params = yaml.safe_load((project / "params.yaml").read_text())
    text, vision = board[board.track == "text"], board[board.track == "vision"]
    # per track its own l1 list, edits (Unlink) on the vlm only: as the DAG lists them
    assert len(text) == len(dag.evaluated_models(params, "text")) == 2 + 2  # ga, dpo without l1
    assert set(text.method) == {"original", "gold", "ga", "dpo"}
    assert text[text.method == "gold"].iloc[0].log10_forget_quality == 0.0
    assert set(vision.method) == {"original", "gold", *params["vision"]["methods"]}
    assert vision.u_lira.between(0, 1).all() and vision.retain_acc.between(0, 1).all()
    vlm = board[board.track == "vlm"]
    assert len(vlm) == len(dag.evaluated_models(params, "vlm"))
    assert set(vlm.method) == {"original", "gold", *params["unlearn"]["methods"]}
    # the attacked models (and only they) have their attack columns; the vision references
    # their relearn_u_lira
    for track, rows in (("text", text), ("vlm", vlm)):
        named = [
            m if m in ("original", "gold") else f"{m}-{'l1' if x else 'nol1'}-{mod}"
            for m, x, mod in zip(rows.method, rows.l1, rows.modality, strict=True)
        ]
        attacked = [m in dag.attacked_models(params, track) for m in named]
        assert (rows.relearn_forget.notna() == attacked).all(), track
    assert vision[vision.method.isin(["original", "gold"])].relearn_u_lira.between(0, 1).all()
    assert vlm.real.between(0, 1).all() or (vlm.status == "diverged").any()
    assert vlm[vlm.method == "gold"].log10_forget_quality.iloc[0] == 0.0
    for name in ("tables/table1_text.md", "tables/table3_modality.md", "tables/table4_l1.md",
                 "plots/text_forget10.png", "plots/losses_text_forget10.png",
                 "plots/losses_vlm_forget10.png", "vision/figure6.png", "report.html",
                 "tables/attacks_text_forget10.md", "plots/attacks_vlm_forget10.png",
                 "plots/attacks_vision_forget10.png"):  # fmt: skip
        assert (project / "results" / name).exists(), name
    assert ran_stages(dvc(project, "repro")) == set(), "a second repro has nothing to do"
    assert "Nothing to be done" in snakemake(project, "-n")


def test_the_smoke_report_renders_in_headless_chromium(project, first_repro, tmp_path):
    board = pd.read_csv(project / "results/leaderboard.csv")
    page = (project / "results/report.html").as_uri()
    dom = chromium(["--dump-dom", page], tmp_path / "profile").stdout
    assert leaderboard_rows(dom) == len(board)
    shown, total = (int(re.search(rf'data-images-{k}="(\d+)"', dom).group(1))
                    for k in ("rendered", "total"))  # fmt: skip
    assert total >= 5 and shown == total, "every plot, figure and contact sheet decodes"


def test_one_method_reruns_alone_and_comes_back_from_the_run_cache(project, first_repro):
    config = yaml.safe_load((project / "params.yaml").read_text())
    before = files(project, "results")
    benchmarks = files(project, "benchmarks", times=False)  # Snakemake's timing of each job
    leaderboard = (project / "results/leaderboard.csv").read_bytes()
    set_dpo(project, beta=0.3)

    # Snakemake: DPO's unlearning, its evaluations and metrics, and the reports; nothing else
    plan = snakemake(project, "-n")
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    output: (.*)$", plan, re.M)
    dpo = {
        path
        for track in ("text", "vlm")
        for split in config["data"]["splits"]
        for model in dag.unlearned_models(config, track, "dpo")
        for path in (dag.model_dir(track, split, model), dag.eval_table(track, split, model),
                     dag.metrics_file(track, split, model))
    }  # fmt: skip
    reports = {"results/leaderboard.csv", "results/report.html"}
    rerun = {out.split(", ")[0] for rule, out in jobs if rule != "all"}
    assert rerun == dpo | reports

    # DVC: the two DPO stages and the report; the other files keep their bytes and times
    log = dvc(project, "repro")
    assert ran_stages(log) == {"text-dpo", "vlm-dpo", "report"}
    after = files(project, "results")
    report = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["report"]["outs"]
    kept = {p for p in before if "dpo" not in p and not any(p.startswith(o) for o in report)}
    assert kept and [p for p in kept if after[p] != before[p]] == [], "the same bytes and times"
    ran = files(project, "benchmarks", times=False)
    assert {p for p in ran if ran[p] != benchmarks.get(p)} == {
        p
        for p in ran
        if "dpo" in p
        or p.startswith(("benchmarks/report", "benchmarks/vision/report", "benchmarks/clip/table"))
    }
    assert (project / "results/leaderboard.csv").read_bytes() != leaderboard

    # back to the earlier value: restored without running anything
    set_dpo(project, beta=yaml.safe_load((ROOT / "params.yaml").read_text())["unlearn"]
            ["method_hp"]["dpo"]["beta"])  # fmt: skip
    log = dvc(project, "repro")
    assert ran_stages(log) == set() and log.count("is cached - skipping run") == 3
    assert (project / "results/leaderboard.csv").read_bytes() == leaderboard
    assert files(project, "benchmarks", times=False) == ran, "no job ran"
    assert "Nothing to be done" in snakemake(project, "-n")
    assert "up to date" in dvc(project, "status")


def test_a_pulled_clone_has_nothing_to_do_and_records_a_direct_run(project, first_repro, tmp_path):
    dvc(project, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    dvc(project, "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    shutil.copy2(project / ".dvc/config", clone / ".dvc/config")  # the remote (not committed)
    dvc(clone, "pull")
    assert (clone / "results/leaderboard.csv").read_bytes() == (
        project / "results/leaderboard.csv"
    ).read_bytes()
    assert "Nothing to be done" in snakemake(clone, "-n")
    assert "up to date" in dvc(clone, "status")

    # Snakemake run directly (no record of its own in a clone): it reruns what DVC would ...
    set_dpo(clone, lambda1=0.5)
    log = snakemake(clone, "--cores", "2")
    assert "text_unlearn" in log and "vlm_unlearn" in log and "text_base" not in log
    # ... and `dvc commit` records it: nothing left for DVC or Snakemake
    dvc(clone, "commit", "--force")
    assert "up to date" in dvc(clone, "status")
    assert ran_stages(dvc(clone, "repro")) == set()
    assert "Nothing to be done" in snakemake(clone, "-n")
