"""Issue 14, points 4 and 5, on the smoke profile run by Snakemake as CI runs it:
- determinism: two clean runs give the same leaderboard (wall times aside) and byte-identical
  per-sample tables;
- interruption: a training job SIGKILLed mid-run, then Snakemake itself killed with every job
  (the overnight crash), and the same command rerun: it completes, with the clean run's
  leaderboard and per-sample tables. Prints the time lost (run with -s to see it);
- the stale locks and half-written outputs such a crash leaves are cleared by the next run,
  and only when no Snakemake works in the folder any more.
About three smoke runs: several minutes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import BIN, ROOT, run, skipped

pytestmark = pytest.mark.slow

WALL = "rte_seconds"  # the only column allowed to differ between runs
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A frozen copy of the code (the jobs import it: PYTHONPATH), so that edits made in the
    checkout while these minutes run cannot make two runs differ."""
    dest = tmp_path_factory.mktemp("code") / "clearbench"
    shutil.copytree(ROOT, dest, ignore=skipped)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", f"{dest / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        yield dest


def command(project: Path, folder: Path) -> list[str]:
    """CI's smoke command, on the frozen copy, run in `folder`."""
    return [str(BIN / "snakemake"), "-s", str(project / "Snakefile"), "--directory", str(folder),
            "--cores", "2", "--configfile", str(project / "config/smoke.yaml")]  # fmt: skip


def smoke(project: Path, folder: Path) -> float:
    """One smoke run of the whole DAG in `folder`; its wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run(command(project, folder), folder)
    return time.perf_counter() - start


def board(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "results/leaderboard.csv").drop(columns=[WALL])


def per_sample(folder: Path) -> dict[str, bytes]:
    tables = sorted((folder / "results/eval").rglob("*.parquet"))
    return {str(p.relative_to(folder)): p.read_bytes() for p in tables}


@pytest.fixture(scope="module")
def clean(project, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clean")
    TIMES["clean run"] = smoke(project, folder)
    return folder


def test_two_clean_runs_give_the_same_bytes(project, clean, tmp_path):
    TIMES["second clean run"] = smoke(project, tmp_path)
    pd.testing.assert_frame_equal(board(clean), board(tmp_path))
    first, second = per_sample(clean), per_sample(tmp_path)
    assert first and list(first) == list(second)
    differ = [name for name in first if first[name] != second[name]]
    assert not differ, f"per-sample tables differ between two clean runs: {differ}"


# ---------------------------------------------------------------------------- interruption
TRAINING = ("unlearn", "idk-reference", "finetune", "vlm-finetune", "vision train",
            "vision unlearn")  # fmt: skip


def jobs_in(folder: Path, kinds: tuple[str, ...]) -> list[tuple[int, bool]]:
    """(pid, begun) of the `python -m clearbench <kind>` processes running in `folder` (Snakemake
    runs every job there): never another run's or another user's. Begun: the job made its --out
    folder (killed now, it leaves a half-written output behind); those first."""
    pids, begun = [], []
    for proc in Path("/proc").iterdir():
        try:
            cmd = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0")]
            cwd = os.readlink(proc / "cwd")
        except (OSError, ValueError):
            continue
        if cwd != str(folder) or "clearbench" not in cmd or "python" not in Path(cmd[0]).name:
            continue
        i = cmd.index("clearbench")
        if cmd[i - 1] == "-m" and any(" ".join(cmd[i + 1 : i + 3]).startswith(k) for k in kinds):
            out = cmd[cmd.index("--out") + 1] if "--out" in cmd[:-1] else None
            (begun if out and (folder / out).exists() else pids).append(int(proc.name))
    return [(pid, True) for pid in begun] + [(pid, False) for pid in pids]


def start_and_kill(project: Path, folder: Path, kinds, whole: bool, patience: float = 60.0):
    """Start the smoke run in `folder`; once a job of `kinds` has begun writing its output (or
    has run `patience` seconds), SIGKILL it (whole: Snakemake and every job at once, the machine
    going down). Returns (seconds until the kill, seconds until Snakemake ended, its exit
    status, what it printed)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    path = folder / f"interrupted-{len(list(folder.glob('interrupted-*')))}.log"
    start = time.perf_counter()
    with path.open("w") as log:
        proc = subprocess.Popen(command(project, folder), cwd=folder, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            first = None
            while not (jobs := jobs_in(folder, kinds)) or not jobs[0][1]:
                assert proc.poll() is None, f"the run ended before a {kinds} job: {path}"
                first = first or (jobs and time.perf_counter())
                if first and time.perf_counter() - first > patience:
                    break
                time.sleep(0.1)
            assert jobs, f"the {kinds} job ended before it could be killed: {path}"
            if whole:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(jobs[0][0], signal.SIGKILL)
            killed = time.perf_counter() - start
            rc = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return killed, time.perf_counter() - start, rc, path.read_text()


def test_killed_job_then_killed_snakemake_resume_to_the_same_leaderboard(project, clean, tmp_path):
    # 1. a training job dies (SIGKILL, as the OOM killer does): Snakemake stops, the job failed
    killed, ended, rc, out = start_and_kill(project, tmp_path, ("unlearn",), whole=False)
    assert rc != 0 and "Error in rule" in out, out[-3000:]
    # 2. the same command again; this time the machine goes down in the middle of a training
    # job: Snakemake and every job at once, leaving incomplete outputs behind
    killed2, _, rc, out = start_and_kill(project, tmp_path, TRAINING, whole=True)
    assert rc == -signal.SIGKILL, out[-3000:]
    # 3. the same command once more completes, with the clean run's leaderboard and tables
    last = smoke(project, tmp_path)
    pd.testing.assert_frame_equal(board(clean), board(tmp_path))
    assert per_sample(clean) == per_sample(tmp_path)
    times = {**TIMES, "until the job was killed": killed, "until that run stopped": ended,
             "rerun until the crash": killed2, "final rerun": last}  # fmt: skip
    if "clean run" in TIMES:  # work redone or waited for: all attempts minus one clean run
        times["time lost"] = ended + killed2 + last - TIMES["clean run"]
    print("\ninterruption timings (s):", json.dumps({k: round(v, 1) for k, v in times.items()}),
          file=sys.stderr)  # fmt: skip


def test_stale_locks_and_incomplete_outputs_go_only_when_no_snakemake_runs_there(project, tmp_path):
    """What a Snakemake killed with its jobs leaves (src/clearbench/resume.py): its locks and a
    half-written output marked incomplete. Removed by the next run; kept while one runs."""
    half = tmp_path / "results/models/text/base"
    marker = (
        tmp_path
        / ".snakemake/incomplete"
        / base64.urlsafe_b64encode(b"results/models/text/base").decode()
    )

    def crashed():
        (tmp_path / ".snakemake/locks").mkdir(parents=True, exist_ok=True)
        (tmp_path / ".snakemake/locks/0.output.lock").write_text("results/models/text/base\n")
        half.mkdir(parents=True, exist_ok=True)
        (half / "half.bin").write_bytes(b"\0")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text('{"external_jobid": null}')

    dry = [*command(project, tmp_path), "-n"]
    crashed()
    # a Snakemake still working in the folder: nothing is touched, Snakemake refuses as ever
    live = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 120"], cwd=tmp_path)
    try:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run(dry, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    finally:
        live.kill()
        live.wait()
    assert (half / "half.bin").exists() and marker.exists()
    assert (tmp_path / ".snakemake/locks/0.output.lock").exists()
    # none any more: the next run clears them and would redo the job
    out = run(dry, tmp_path)
    assert "resume: removed results/models/text/base" in out
    assert not half.exists() and not marker.exists()
    assert not list((tmp_path / ".snakemake/locks").iterdir())
    assert "text_base" in out
