#!/usr/bin/env python3
"""A stand-in cluster for snakemake-executor-plugin-cluster-generic: every job runs as its own
detached process in a fresh folder that holds the workflow code and the job's declared inputs,
nothing else. A job that reads an undeclared file (or another job's memory) fails here, as it
would on a cluster node without the project's folder.

  submit.py JOBSCRIPT   submit: prints the job id, the job's folder .snakemake/sandbox/<name>
  submit.py JOB_ID      status: prints running, success or failed
  submit.py --run DIR   the job itself (started by submit)

A job's folder keeps jobscript.sh, job.log and status; its copy of the project (work/) is
deleted when the job succeeds (after its outputs, logs and benchmarks are copied back) and kept
when it fails, for debugging.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# the workflow definition (not data) that a job's Snakemake parses; Python code comes from the
# installed package, as on a cluster
WORKFLOW = ("Snakefile", "workflow", "params.yaml", "config", "environment.yml")
# cluster-generic options that make the job wait for files on a shared filesystem: the
# sandbox copies them before the job starts
WAIT = ("--wait-for-files", "--wait-for-files-file")


def read_job_properties(jobscript: str | Path) -> dict:
    # as snakemake.utils does: this script runs under whichever python3 is on PATH
    line = next(ln for ln in Path(jobscript).read_text().splitlines() if ln.startswith("# prop"))
    return json.loads(line.split(" = ", 1)[1])


def copy(src: Path, dest: Path) -> None:
    if src.resolve() == dest.resolve():  # a declared input outside the project: read in place
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dest)


def files(folder: Path) -> set[Path]:
    return {
        p.relative_to(folder)
        for p in folder.rglob("*")
        if not p.is_dir() and p.relative_to(folder).parts[0] != ".snakemake"
    }


def run(box: Path) -> bool:
    jobscript = box / "jobscript.sh"
    job = read_job_properties(jobscript)
    line = next(ln for ln in jobscript.read_text().splitlines() if ln.startswith("cd "))
    tokens = shlex.split(line)
    project, basedir = Path(tokens[1]), Path(tokens[tokens.index("--snakefile") + 1]).parent
    work = box / "work"
    # where each folder's files go (one folder when the workflow runs in its own folder); the
    # job's Snakemake derives its paths from the copies, e.g. SRC from workflow.basedir
    roots = {basedir: box / "workflow", project: work}

    def place(path: str) -> Path:
        full = Path(os.path.abspath(project / path))
        inside = [r for r in roots if full.is_relative_to(r)]
        root = max(inside, key=lambda r: len(r.parts), default=None)
        return roots[root] / full.relative_to(root) if root else full

    if job["input"] is None:
        raise SystemExit(f"{job['rule']}: too many inputs to list in the jobscript")
    work.mkdir()
    for name in WORKFLOW:
        if (basedir / name).exists():
            copy(basedir / name, roots[basedir] / name)
    for path in job["input"]:
        copy(project / path, place(path))

    command, option = [], None
    for token in tokens:
        if token.startswith("--") or token in ("&&", "||"):
            option = token
        if option in WAIT:
            continue
        if command and command[-1] == "cd":
            token = str(work)
        elif option in ("--snakefile", "--configfiles") and token != option:
            copy(Path(token), place(token))
            token = str(place(token))
        command.append(token)
    shell = " ".join(t if t in ("&&", "||") else shlex.quote(t) for t in command)
    before = files(work)
    print(f"{job['rule']} (job {job['jobid']}): {len(job['input'])} inputs\n{shell}", flush=True)
    ok = subprocess.run(["sh", "-c", shell], cwd=work).returncode == 0
    # benchmark files are not in the job properties: all that the job made comes back; on
    # failure only its logs (Snakemake prints them)
    back = files(work) - before if ok else {Path(p) for p in job["log"] if (work / p).exists()}
    for path in back:
        copy(work / path, project / path)
    return ok


def main(arg: str, box: str | None = None) -> None:
    if arg == "--run":
        box = Path(box)
        status = "failed"
        try:
            status = "success" if run(box) else "failed"
        finally:
            if status == "success":
                shutil.rmtree(box / "work")
                shutil.rmtree(box / "workflow", ignore_errors=True)
            (box / "status.tmp").write_text(status + "\n")
            (box / "status.tmp").rename(box / "status")
    elif Path(arg).is_dir():
        box = Path(arg)
        if (box / "status").exists():
            print((box / "status").read_text().strip())
        else:
            try:
                os.kill(int((box / "pid").read_text()), 0)
                print("running")
            except (OSError, ValueError):  # gone without a status: killed
                print("failed")
    else:
        job = read_job_properties(arg)
        sandboxes = Path(".snakemake/sandbox").resolve()
        sandboxes.mkdir(parents=True, exist_ok=True)
        box = Path(tempfile.mkdtemp(prefix=f"{job['rule']}-{job['jobid']}-", dir=sandboxes))
        shutil.copy(arg, box / "jobscript.sh")
        with open(box / "job.log", "w") as log:
            child = subprocess.Popen(
                [sys.executable, __file__, "--run", str(box)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        (box / "pid").write_text(str(child.pid))
        print(box)


if __name__ == "__main__":
    main(*sys.argv[1:])
