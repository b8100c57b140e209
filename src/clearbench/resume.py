"""Resuming after a crash: Snakemake killed with its jobs (SIGKILL, OOM, the machine going down)
leaves its locks in .snakemake/locks, and the same command then refuses to run ("Directory
cannot be locked") until `snakemake --unlock`. `clear_stale_run`, which the Snakefile calls
before Snakemake locks: when no Snakemake process works in this folder any more (the main
process records host and pid; on Linux /proc is also asked), its locks are stale and removed. A live run keeps them, so two
runs in one folder are still refused. The jobs the crash interrupted are redone: what they
left (e.g. a model folder without its model.json) is removed with Snakemake's incomplete marker,
as --rerun-incomplete would (the workflow profile that sets it is not found by default).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from base64 import urlsafe_b64decode
from pathlib import Path

OWNER = Path(".snakemake/clearbench-owner")


def snakemake_pid(pid: int) -> bool:
    """Whether `pid` is a Snakemake process on this machine (no /proc: whether it exists)."""
    try:
        return b"snakemake" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def other_snakemake_here() -> bool:
    """Another Snakemake process working in this folder (Linux: by /proc)."""
    here = os.getcwd()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) == os.getpid() or os.readlink(proc / "cwd") != here:
                continue
            if b"snakemake" in (proc / "cmdline").read_bytes():
                return True
        except (OSError, ValueError):
            continue
    return False


def remove_incomplete() -> None:
    """The outputs of the jobs a dead Snakemake was running, and their markers: Snakemake's
    file persistence names a marker .snakemake/incomplete/<urlsafe base64 of the output path>
    (long names split into folders, each part but the last prefixed with @)."""
    markers = Path(".snakemake/incomplete")
    for marker in [p for p in markers.rglob("*") if p.is_file()] if markers.is_dir() else []:
        parts = marker.relative_to(markers).parts
        try:
            output = Path(urlsafe_b64decode("".join(p.removeprefix("@") for p in parts)).decode())
        except ValueError:
            continue  # not a marker of this format: leave it to Snakemake
        if output.is_absolute() or ".." in output.parts:
            continue
        if output.is_dir() and not output.is_symlink():
            shutil.rmtree(output)
        else:
            output.unlink(missing_ok=True)
        marker.unlink()
        print(
            f"resume: removed {output}, left incomplete by a run that was killed", file=sys.stderr
        )


def clear_stale_run() -> None:
    """Remove a dead run's locks and incomplete outputs; record this process as the owner."""
    try:
        host, pid = OWNER.read_text().split()
    except (OSError, ValueError):
        host, pid = socket.gethostname(), "0"  # never recorded: decide by the processes here
    if host != socket.gethostname() or snakemake_pid(int(pid)) or other_snakemake_here():
        return  # maybe running (elsewhere): Snakemake's own lock check decides
    for lock in Path(".snakemake/locks").glob("*.lock"):
        lock.unlink(missing_ok=True)
    remove_incomplete()
    OWNER.parent.mkdir(parents=True, exist_ok=True)
    OWNER.write_text(f"{socket.gethostname()} {os.getpid()}\n")
