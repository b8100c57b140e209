"""Cluster execution (issue 13 point 5): the smoke DAG through a real non-local executor
(cluster-generic with workflow/profiles/sandbox/submit.py), each job a separate process in a
folder holding only the workflow code and its declared inputs; a job that reads an undeclared
file fails there; and the Slurm profile passes the Slurm plugin's own argument checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, ROOT, run, skipped

SANDBOX = ROOT / "workflow" / "profiles" / "sandbox"
SLURM = ROOT / "workflow" / "profiles" / "slurm"
AGGREGATES = {"all"}  # no command: Snakemake itself "runs" them, nothing is submitted


def job_stats(log: str) -> Counter:
    """Jobs per rule, from the first 'Job stats' table of a Snakemake run."""
    table = log.split("Job stats:", 1)[1].split("\ntotal", 1)[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+) +(\d+)$", table, re.M)})


def sandboxes(folder: Path) -> dict[Path, str]:
    """Each job's sandbox -> its status."""
    return {box: (box / "status").read_text().strip()
            for box in (folder / ".snakemake" / "sandbox").iterdir()}  # fmt: skip


@pytest.mark.slow
def test_smoke_dag_runs_every_job_in_its_own_sandbox(tmp_path):
    project = tmp_path / "clearbench"
    shutil.copytree(ROOT, project, ignore=skipped)
    log = run([str(BIN / "snakemake"), "--workflow-profile", "workflow/profiles/sandbox",
               "--jobs", "2", "--configfile", "config/smoke.yaml"], project)  # fmt: skip
    assert (project / "results/leaderboard.csv").stat().st_size > 0
    jobs = job_stats(log)
    boxes = sandboxes(project)
    submitted = Counter({rule: n for rule, n in jobs.items() if rule not in AGGREGATES})
    assert Counter(box.name.split("-")[0] for box in boxes) == submitted
    assert set(boxes.values()) == {"success"}
    assert not any((box / "work").exists() for box in boxes)  # cleaned after copying back
    # every output, log and benchmark came back, with Snakemake's metadata for it
    again = run([str(BIN / "snakemake"), "-n", "--configfile", "config/smoke.yaml"], project)
    assert "Nothing to be done" in again


def test_a_job_that_reads_an_undeclared_file_fails_in_its_sandbox(tmp_path):
    (tmp_path / "data.txt").write_text("x\n")
    (tmp_path / "Snakefile").write_text(
        'rule declared:\n    input: "data.txt"\n    output: "a.txt"\n    shell: "cat data.txt > a.txt"\n\n'
        'rule undeclared:\n    output: "b.txt"\n    shell: "cat data.txt > b.txt"\n'
    )
    cmd = [str(BIN / "snakemake"), "--workflow-profile", str(SANDBOX)]
    run([*cmd, "a.txt"], tmp_path)
    assert (tmp_path / "a.txt").read_text() == "x\n"
    failed = subprocess.run([*cmd, "b.txt"], cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode != 0 and not (tmp_path / "b.txt").exists()
    boxes = sandboxes(tmp_path)
    assert sorted(boxes.values()) == ["failed", "success"]
    (kept,) = [box for box, status in boxes.items() if status == "failed"]
    assert "cat: data.txt: No such file or directory" in (kept / "job.log").read_text()
    assert (kept / "work" / "Snakefile").exists()  # kept for debugging


def test_slurm_profile_passes_the_slurm_plugins_checks(tmp_path):
    # the real executor, not --executor dryrun: a misspelt option, a plugin setting it refuses,
    # or no plugin for `executor: slurm` stops this dry-run
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--workflow-profile", str(SLURM),
         "--directory", str(tmp_path), "--configfile", "config/paper.yaml", "--",
         "results/leaderboard.csv"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    profile = yaml.safe_load((SLURM / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    # Snakemake ignores set-resources of a rule that does not exist: a renamed rule would
    # silently lose its GPU partition
    assert set(profile["set-resources"]) <= set(job_stats(done.stdout + done.stderr))
