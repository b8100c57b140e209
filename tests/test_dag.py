"""The DAG: dry-runs of every profile, dvc.yaml in step with the Snakemake phases, and the
two install files agreeing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILES = [
    "params.yaml",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config").glob("*.yaml")),
]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, cwd=ROOT):
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("profile", PROFILES)
def test_dry_run_every_profile(profile, tmp_path):
    # a clean directory: no data, no weights, nothing from an earlier run
    run = snakemake("-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                    "--configfile", str(ROOT / profile), cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "leaderboard" in run.stdout


def test_dry_run_tofu_on_a_local_copy(tmp_path):
    """config/tofu.yaml names hub:locuslab/TOFU; a local copy is an overlay after it (as CI's
    .ci/tofu-local.yaml), and its folder is checked before any job runs."""
    tofu = Path(os.environ.get("CLEARBENCH_TOFU_DIR", ROOT.parent / "shared/data/tofu"))
    if not (tofu / "full.json").is_file():
        pytest.skip(f"TOFU files not found at {tofu} (set CLEARBENCH_TOFU_DIR)")
    for name, folder in (("local", tofu), ("missing", tmp_path / "no_tofu_here")):
        overlay = tmp_path / f"{name}.yaml"
        overlay.write_text(yaml.safe_dump({"data": {"text": {"tofu_dir": str(folder)}}}))
        run = snakemake("-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                        "--configfile", str(ROOT / "config/tofu.yaml"), str(overlay),
                        cwd=tmp_path)  # fmt: skip
        if name == "local":
            assert run.returncode == 0, run.stderr[-2000:]
        else:
            assert run.returncode != 0 and f"TOFU folder not found: {folder}" in run.stderr


def dvc_stages():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            items = params
            for key in stage["foreach"].strip("${} ").split("."):
                items = items[key]
            for item in items:
                body = yaml.safe_dump(stage["do"]).replace("${item}", item)
                out[f"{name}@{item}"] = yaml.safe_load(body)
        else:
            out[name] = stage
    return out


def snakemake_target_outputs(target: str) -> set[str]:
    """Every file the DAG of a phase target holds (its own jobs and their upstream)."""
    detailed = snakemake("--detailed-summary", "--", target)
    assert detailed.returncode == 0, detailed.stderr[-2000:]
    return {line.split("\t")[0] for line in detailed.stdout.splitlines()[1:] if line}


def test_dvc_stages_match_snakemake_phases():
    stages = dvc_stages()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    expected = {"data", "base", "finetune", "reference", "evaluate", "vision", "vlm", "report"}
    expected |= {f"unlearn@{m}" for m in params["unlearn"]["methods"]}
    assert set(stages) == expected
    rules = set(snakemake("--list-rules").stdout.split())
    for name, stage in stages.items():
        target = stage["cmd"].split(" -- ")[-1].strip()
        allowed = re.search(r"--allowed-rules (.*?) --", stage["cmd"]).group(1).split()
        produced = snakemake_target_outputs(target)
        assert set(allowed) <= rules, f"{name}: unknown rules {set(allowed) - rules}"
        # every output Snakemake makes for this phase lies inside one of the stage's outs
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]]
        phase_files = {
            p for p in produced if not any(p.startswith(o) for o in _upstream(stages, name))
        }
        for path in phase_files:
            assert any(path == o or path.startswith(o.rstrip("/") + "/") for o in outs), (
                f"stage {name}: Snakemake output {path} is not under any dvc out {outs}"
            )
        # and every dvc out is something the phase really produces
        for o in outs:
            assert any(p == o or p.startswith(o.rstrip("/") + "/") for p in phase_files), (
                f"stage {name}: dvc out {o} is produced by no job of target {target}"
            )


def _upstream(stages, name):
    """Outs of every other stage: files a phase target needs but does not make."""
    return [
        o if isinstance(o, str) else next(iter(o))
        for other, stage in stages.items()
        if other != name
        for o in stage["outs"]
    ]


def test_pyproject_and_environment_list_the_same_packages():
    def names(specs):
        return {re.split(r"[<>=!~ \[]", s.strip())[0].lower().replace("_", "-") for s in specs}

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = [d for d in env if isinstance(d, str)]
    pip = next(d["pip"] for d in env if isinstance(d, dict))
    listed = names(conda + [p for p in pip if not p.startswith("-")]) - {"python", "pip"}
    listed = {"torch" if n == "pytorch" else n for n in listed}
    assert listed == names(project["dependencies"])
