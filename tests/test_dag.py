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

from clearbench import dag

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


def dry_run_jobs(*args: str) -> list[dict]:
    """Every job of the DAG (as if nothing existed yet) with its rule, inputs and outputs."""
    run = snakemake("-n", "--forceall", *args)
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", run.stdout):
        rule = re.match(r"(?:local)?rule (\w+):\n", block)
        if rule:
            fields = dict(re.findall(r"^    (input|output): (.*)$", block, re.M))
            jobs.append({"rule": rule.group(1)} | {k: fields.get(k, "").split(", ") if fields.get(k) else []
                                                   for k in ("input", "output")})  # fmt: skip
    return jobs


def covers(paths, path: str) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths)


def test_dvc_yaml_is_generated_from_params():
    from clearbench.dvc_stages import render

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert (ROOT / "dvc.yaml").read_text() == render(params), "run `python -m clearbench dvc-yaml`"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    from clearbench.unlearn.registry import DECLARED

    methods = params["unlearn"]["methods"]
    runs = {f"{t}-{m}" for t in ("text", "vlm") for m in methods if t in DECLARED[m].tracks}
    assert runs <= set(stages) and "vlm-unlink" in runs and "text-unlink" not in stages
    assert {f"vision-{m}" for m in params["vision"]["methods"]} <= set(stages)
    for shared in ("data", "base", "finetune", "vlm", "dpo_reference", "references", "report"):
        assert shared in stages
    # a method's stage tracks its own hyperparameters, not the other methods'
    assert "unlearn.method_hp.ga" in stages["text-ga"]["params"]
    assert not any("method_hp.gd" in p for p in stages["text-ga"]["params"])


def test_dvc_stages_partition_the_snakemake_dag():
    """Each Snakemake output lies in exactly one stage's outs and is made by a rule that stage
    allows; every input a job reads is an output of its own stage or a dep of the stage; every
    out and every target of a stage is made by its jobs."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    allowed = {
        name: re.search(r"--allowed-rules (.*?) --", st["cmd"]).group(1).split()
        for name, st in stages.items()
    }
    made: dict[str, set[str]] = {name: set() for name in stages}
    for job in dry_run_jobs():
        owners = {
            name for o in job["output"] for name, st in stages.items() if covers(st["outs"], o)
        }
        if not job["output"]:
            continue  # a phase target (aggregate rule)
        assert len(owners) == 1, f"{job['rule']} {job['output']}: in stages {owners or 'none'}"
        (name,) = owners
        assert job["rule"] in allowed[name], f"{job['rule']} runs in stage {name}, not allowed"
        made[name].update(job["output"])
        for path in job["input"]:
            assert covers(stages[name]["outs"], path) or covers(stages[name]["deps"], path), (
                f"stage {name}: {job['rule']} reads {path}, not a dep"
            )
    for name, st in stages.items():
        for out in st["outs"]:
            assert any(covers([out], f) for f in made[name]), f"{name}: no job makes {out}"
        targets = st["cmd"].split(" -- ")[-1].split()
        for target in targets:
            assert target in made[name] or target in allowed[name], f"{name}: target {target}"


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


def test_a_stale_dvc_yaml_is_named_before_any_job(tmp_path):
    from clearbench.dvc_stages import out_of_date, render

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text(render(params))
    assert out_of_date(tmp_path) is None
    params["unlearn"]["methods"].remove("ga")  # a method dropped without regenerating
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert "python -m clearbench dvc-yaml" in out_of_date(tmp_path)


def test_attacked_models_follow_the_attack_matrix():
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    config["unlearn"]["methods"] = ["ga", "npo"]
    config["attacks"] |= {"methods": ["npo"], "l1": [False]}
    assert dag.attacked_models(config, "vlm") == ["original", "gold", "npo-nol1-both"]
    config["attacks"]["l1"] = [False, True]
    config["vlm"]["unlearn"]["l1"] = [False, True]  # default runs no l1 (time budget)
    assert dag.attacked_models(config, "vlm") == [
        "original", "gold", "npo-nol1-both", "npo-l1-both"
    ]  # fmt: skip
    # text runs without l1 only (text.unlearn.l1), whatever attacks.l1 says
    assert dag.attacked_models(config, "text") == ["original", "gold", "npo-nol1-text"]
    del config["attacks"]
    assert dag.attacked_models(config, "vlm") == [] and dag.all_attack_metrics(config) == []
