"""Outputs that DVC restores (checkout, pull, a run-cache hit) get the time of the restore as
their modification time, in whatever order DVC wrote them, and Snakemake would rebuild each one
that looks older than an input; in a fresh clone Snakemake also has no record of its own to
notice a changed parameter. The Snakefile calls `align_restored_mtimes` before the DAG is built.
When the DVC outputs, dvc.yaml, dvc.lock or params.yaml changed since it last looked, it asks
`dvc status` and a Snakemake dry-run, and for each DVC stage:

- up to date (its outputs are what dvc.lock records, from the inputs and params it records) but
  with jobs Snakemake plans (an input looks newer, or its record is of another run): its files,
  and those of the up-to-date stages downstream of it, get new times in stage order (all files
  of a stage the same time), and where Snakemake's record of a file is of another run (other
  parameters or code, undone by the restore), Snakemake forgets it;
- its recorded outputs are there but its inputs or params changed: its files get an old time,
  so that Snakemake reruns it as `dvc repro` would, with or without a record of its own;
- anything else (outputs Snakemake made since, deleted ones) is left to Snakemake.

Files in order keep their times. The common path is a stat of each output and no DVC import;
what was last seen is in .snakemake/clearbench/dvc-outs.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from clearbench.io import write_text_atomic

STAMP = Path(".snakemake/clearbench/dvc-outs.json")
STALE = 946684800.0  # 2000-01-01: older than any input
OTHER_RUN = ("Params have changed", "Code has changed")  # its record is of another run
BUSY = "CLEARBENCH_ALIGNING"


def files_under(path: Path):
    if path.is_dir():
        for folder, dirs, names in os.walk(path):
            dirs.sort()
            yield Path(folder)
            # with Snakemake's .snakemake_timestamp, which DVC ignores but Snakemake reads
            yield from (Path(folder) / n for n in sorted(names))
    elif path.exists():
        yield path


def fingerprint(root: Path, stages: dict) -> str:
    files = (root / "dvc.yaml", root / "dvc.lock", root / "params.yaml")
    texts = [p.read_text() if p.is_file() else "" for p in files]
    digest = hashlib.sha256("\0".join(texts).encode())
    for f in (f for st in stages.values() for o in st["outs"] for f in files_under(root / o)):
        st = f.stat()
        digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def pipeline(root: Path) -> dict[str, dict]:
    """dvc.yaml's stages (generated: no templating), each with its deps and outs."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages") or {}
    return {n: {"deps": s.get("deps", []), "outs": s.get("outs", [])} for n, s in stages.items()}


def inside(paths, path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in paths)


def upstream(stages: dict) -> dict[str, set[str]]:
    """Stage -> the stages whose outputs it depends on."""
    return {
        name: {
            other
            for other, o in stages.items()
            if other != name
            and any(
                inside(o["outs"], d) or inside([d], out) for d in st["deps"] for out in o["outs"]
            )
        }
        for name, st in stages.items()
    }


def stage_order(stages: dict, after: dict[str, set[str]]) -> list[str]:
    """The stages, each after those in `after[stage]` (upstream)."""
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and after[n] <= set(order)]
        if not ready:  # a cycle is not a valid pipeline; leave the rest alone
            break
        order += ready
    return order


def dvc_status(root: Path) -> dict[str, set[str]] | None:
    """Stage -> what `dvc status` says changed ("changed deps", "changed outs", ...); None where
    DVC could not tell."""
    run = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    try:
        report = json.loads(run.stdout or "{}") if run.returncode == 0 else None
    except json.JSONDecodeError:
        report = None
    if report is None:
        return None
    return {
        name.split(":")[-1]: {k for item in items if isinstance(item, dict) for k in item}
        | {item for item in items if isinstance(item, str)}
        for name, items in report.items()
    }


def snakemake(root: Path, *args: str) -> str:
    """This workflow's Snakemake, for a look at its plan or records while aligning."""
    env = os.environ | {BUSY: "1"}  # its own Snakefile parse must not align again
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=root, env=env,
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    return run.stdout


def planned_jobs(root: Path) -> list[tuple[list[str], str]]:
    """(outputs, reason) of each job a dry-run of `all` plans."""
    plan = snakemake(root, "-n", "all")
    blocks = re.split(r"\n(?=(?:local)?rule \w+:\n)", plan)
    jobs = []
    for block in blocks:
        output = re.search(r"^    output: (.*)$", block, re.M)
        reason = re.search(r"^    reason: (.*)$", block, re.M)
        if output and reason:
            jobs.append((output.group(1).split(", "), reason.group(1)))
    return jobs


def write_stamp(root: Path, stages: dict) -> None:
    (root / STAMP).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / STAMP, json.dumps({"seen": fingerprint(root, stages)}))


def align_restored_mtimes(root: Path = Path(".")) -> list[str]:
    """Retime what DVC restored or left stale (module docstring); return the stages retimed."""
    if (
        os.environ.get("DVC_STAGE")
        or os.environ.get(BUSY)
        or not (root / "dvc.lock").is_file()
        or not (root / ".dvc").is_dir()
    ):
        return []  # not a DVC working copy with results, DVC runs a stage, or we are aligning
    stages = pipeline(root)
    try:
        if json.loads((root / STAMP).read_text())["seen"] == fingerprint(root, stages):
            return []
    except (OSError, ValueError, KeyError):
        pass
    status = dvc_status(root)
    if status is None:
        return []
    owner = {o: name for name, st in stages.items() for o in st["outs"]}
    needs, forget = set(), []
    for outputs, reason in planned_jobs(root):
        name = next((owner[o] for o in owner if inside([o], outputs[0])), None)
        if name is None or name in status:
            continue
        needs.add(name)  # DVC found it up to date: whatever Snakemake plans there is spurious
        if any(why in reason for why in OTHER_RUN):
            forget += outputs
    after = upstream(stages)
    start, retimed = time.time(), []
    for k, name in enumerate(stage_order(stages, after)):
        changes = status.get(name)
        if changes is None and (name in needs or after[name] & set(retimed)):
            t = start + 0.01 * k
        elif changes is not None and "changed outs" not in changes:
            t = STALE
        else:
            continue
        for f in (f for o in stages[name]["outs"] for f in files_under(root / o)):
            os.utime(f, (t, t))
        if changes is None:
            retimed.append(name)
    if retimed:
        # Snakemake counts a job's benchmark file among its outputs' times: keep them newest
        end = start + 0.01 * len(stages)
        for f in files_under(root / "benchmarks"):
            os.utime(f, (end, end))
    write_stamp(root, stages)
    if forget:
        snakemake(root, "--quiet", "all", "--cleanup-metadata", *forget)
    return retimed
