"""End to end on the smoke profile, through DVC: the whole DAG from clean, nothing to do on a
second run, a parameter change reruns only the stages that depend on it, and the run-cache
restores a configuration seen before without recomputing it. Takes a few minutes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOP_LEVEL_SKIP = {".git", ".venv", ".snakemake", "data", "results", "logs", "benchmarks",
                  ".pytest_cache", ".ruff_cache", "tmp"}  # fmt: skip


def skipped(folder: str, names: list[str]) -> list[str]:
    top = Path(folder) == ROOT
    return [n for n in names if n == "__pycache__" or (top and n in TOP_LEVEL_SKIP)]


def merge(base: dict, overlay: dict) -> dict:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A scratch copy of the project whose params.yaml is the smoke profile, under git + DVC."""
    dest = tmp_path_factory.mktemp("e2e") / "clearbench"
    shutil.copytree(ROOT, dest, ignore=skipped)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                   yaml.safe_load((ROOT / "config/smoke.yaml").read_text()))  # fmt: skip
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(dest / "config")  # the copy must run on params.yaml alone
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", "commit", "-qm", "x"]):  # fmt: skip
        run(cmd, dest)
    return dest


@pytest.fixture(scope="module")
def first_repro(project) -> str:
    return run(["dvc", "repro"], project)


def test_repro_from_clean_builds_the_leaderboard(project, first_repro):
    board = pd.read_csv(project / "results/leaderboard.csv")
    params = yaml.safe_load((project / "params.yaml").read_text())
    n_methods = len(params["unlearn"]["methods"]) * len(params["unlearn"]["l1"])
    text, vision = board[board.track == "text"], board[board.track == "vision"]
    assert len(text) == 2 + n_methods
    assert set(text.method) >= {"original", "gold", *params["unlearn"]["methods"]}
    gold = text[text.method == "gold"].iloc[0]
    assert gold.log10_forget_quality == 0.0
    assert (project / "results/plots/text_forget10.png").exists()
    assert set(vision.method) == {"original", "gold", *params["vision"]["methods"]}
    assert vision.u_lira.between(0, 1).all() and vision.retain_acc.between(0, 1).all()
    assert (project / "results/vision/figure6.png").exists()
    vlm = board[board.track == "vlm"]
    study = params["unlearn"]["modality_study"]
    n_study = len(study["methods"]) * len(study["modalities"])
    assert len(vlm) == 2 + n_methods * len(params["unlearn"]["modalities"]) + n_study
    assert set(vlm.method) == {"original", "gold", *params["unlearn"]["methods"]}
    assert vlm.real.between(0, 1).all() or (vlm.status == "diverged").any()
    assert vlm[vlm.method == "gold"].log10_forget_quality.iloc[0] == 0.0
    for name in ("table1_text", "table3_modality", "table4_l1"):
        assert (project / f"results/tables/{name}.md").exists(), name
    for track in ("text", "vlm"):
        assert (project / f"results/plots/losses_{track}_forget10.png").exists()
    for stage in ("data", "base", "finetune", "reference", "vlm", "evaluate", "vision", "report"):
        assert f"Running stage '{stage}'" in first_repro


def test_second_repro_and_snakemake_have_nothing_to_do(project, first_repro):
    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again
    dry = run(["snakemake", "-n", "results/leaderboard.csv"], project)
    assert "Nothing to be done" in dry


def test_param_change_reruns_only_dependent_stages(project, first_repro):
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["text"]["unlearn"]["lr"] = params["text"]["unlearn"]["lr"] * 2
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    base_weights = project / "results/models/text/base/model.safetensors"
    base_mtime = base_weights.stat().st_mtime_ns

    changed = run(["dvc", "repro"], project)
    for stage in ("data", "base", "finetune", "reference", "vlm", "vision"):
        assert f"Running stage '{stage}'" not in changed, f"{stage} should not rerun"
    for method in params["unlearn"]["methods"]:
        assert f"Running stage 'unlearn@{method}'" in changed
    assert "Running stage 'evaluate'" in changed and "Running stage 'report'" in changed
    assert base_weights.stat().st_mtime_ns == base_mtime

    # back to the first configuration: restored from the run-cache, not recomputed
    params_path.write_text(original)
    restored = run(["dvc", "repro"], project)
    assert "Running stage" not in restored
    assert "skipping run" in restored or "Restored stage" in restored
