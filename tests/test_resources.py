"""Per-phase cluster requests (compute.resources): every job of a dry-run shows its phase's gpu,
mem_mb and runtime, the Slurm profile sends GPU jobs to the GPU partition, bad values stop with
one line, and the paper's second text model (Mistral-7B) runs as its own overlay."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clearbench.config import ConfigError, check
from tests.conftest import dry_run_with

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
PHASES = ["base", "finetune", "unlearn", "eval", "vision_pretrain", "vision_train",
          "vision_unlearn", "clip", "cpu"]  # fmt: skip
# every rule that runs a command -> the phase whose request it makes
RULE_PHASE = {
    "text_data": "cpu",
    "html_report": "cpu",
    "clear_data": "cpu",
    "text_base": "base",
    "vlm_base": "base",
    "text_original": "finetune",
    "text_gold": "finetune",
    "vlm_original": "finetune",
    "vlm_gold": "finetune",
    "text_idk_reference": "unlearn",
    "text_unlearn": "unlearn",
    "vlm_idk_reference": "unlearn",
    "vlm_unlearn": "unlearn",
    "text_eval": "eval",
    "vlm_eval": "eval",
    "vision_pretrain": "vision_pretrain",
    "vision_train": "vision_train",
    "vision_unlearn": "vision_unlearn",
    "metrics": "cpu",
    "vision_score": "cpu",
    "vision_report": "cpu",
    "text_attack": "attack",
    "vlm_attack": "attack",
    "vision_relearn": "attack",
    "attack_metrics": "cpu",
    "vision_relearn_score": "cpu",
    "clip_original": "clip",
    "clip_gold": "clip",
    "clip_unlearn": "clip",
    "clip_table": "cpu",
    "leaderboard": "cpu",
}
AGGREGATES = {"all"}  # no command: never submitted
MISTRAL = "mistralai/Mistral-7B-v0.1"


def merged(*overlays: str) -> dict:
    config = copy.deepcopy(PARAMS)
    for name in overlays:
        _merge(config, yaml.safe_load((ROOT / name).read_text()))
    return config


def _merge(base, overlay):
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def dry_run(directory: Path, *args: str, cwd: Path = ROOT) -> list[dict]:
    """`snakemake -n -p` in a clean directory; one dict per job: rule, wildcards, resources
    (name -> str), shell."""
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(directory), *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return parse_jobs(run.stdout)


def parse_jobs(stdout: str) -> list[dict]:
    jobs = []
    for line in stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            jobs.append({"rule": m.group(1), "wildcards": {}, "resources": {}, "shell": ""})
        elif not jobs:
            continue
        elif m := re.match(r"^    (resources|wildcards): (.*)$", line):
            pairs = (item.split("=", 1) for item in m.group(2).split(", "))
            jobs[-1][m.group(1)] = {k: v for k, v in pairs}
        elif line.startswith("Shell command: "):
            jobs[-1]["shell"] = line[len("Shell command: ") :]
    return jobs


def request(job: dict) -> dict:
    res = job["resources"]
    return {k: int(res[k]) for k in ("gpu", "mem_mb", "runtime") if k in res}


@pytest.fixture(scope="module")
def paper_jobs(tmp_path_factory):
    # the documented command: snakemake -n --configfile config/paper.yaml results/leaderboard.csv
    return dry_run(tmp_path_factory.mktemp("paper"), "--configfile", "config/paper.yaml", "--",
                   "results/leaderboard.csv")  # fmt: skip


def test_paper_dry_run_shows_each_jobs_phase_request(paper_jobs):
    phases = merged("config/paper.yaml")["compute"]["resources"]
    rules = {job["rule"] for job in paper_jobs}
    # every rule but the HTML page, which is made from the leaderboard, not for it
    assert rules == set(RULE_PHASE) - {"html_report"}, "a rule without a phase (add it)"
    for job in paper_jobs:
        expected = phases[RULE_PHASE[job["rule"]]]
        assert request(job) == expected, job["rule"]
    unlearn = next(j for j in paper_jobs if j["rule"] == "text_unlearn")
    assert request(unlearn) == {
        "gpu": 1,
        **{k: phases["unlearn"][k] for k in ("mem_mb", "runtime")},
    }
    assert phases["unlearn"]["mem_mb"] >= 32000 and phases["unlearn"]["runtime"] >= 60
    for rule in ("metrics", "leaderboard", "text_data", "vision_score"):
        job = next(j for j in paper_jobs if j["rule"] == rule)
        assert request(job)["gpu"] == 0, rule


def test_default_profile_requests_no_gpu(tmp_path):
    jobs = dry_run(tmp_path, "all")
    assert {j["rule"] for j in jobs} - AGGREGATES == set(RULE_PHASE)
    phases = PARAMS["compute"]["resources"]
    for job in jobs:
        if job["rule"] in AGGREGATES:
            continue
        assert request(job) == phases[RULE_PHASE[job["rule"]]], job["rule"]
        assert request(job)["gpu"] == 0


def test_slurm_profile_sends_gpu_jobs_to_the_gpu_partition(tmp_path):
    # the slurm profile's resources without the plugin: the dry-run executor overrides its executor
    jobs = dry_run(tmp_path, "--executor", "dryrun", "--workflow-profile",
                   str(ROOT / "workflow" / "profiles" / "slurm"), "--configfile",
                   "config/paper.yaml", "--", "results/leaderboard.csv")  # fmt: skip
    assert jobs
    for job in jobs:
        partition = job["resources"]["slurm_partition"]
        wanted = "<gpu-partition>" if request(job)["gpu"] > 0 else "<cpu-partition>"
        assert partition == wanted, f"{job['rule']}: gpu={request(job)['gpu']} on {partition}"
        assert job["resources"]["slurm_account"] == "<your-account>"
        assert "gpu_model" not in job["resources"] and "gres" not in job["resources"]


def test_paper_mistral_runs_the_text_track_on_all_splits(tmp_path):
    # as documented: from the project, config files relative to it, results in --directory
    jobs = dry_run(tmp_path, "--configfile", "config/paper.yaml", "config/paper-mistral.yaml",
                   "--", "results/leaderboard.csv")  # fmt: skip
    rules = {j["rule"] for j in jobs}
    assert rules == {"text_data", "text_base", "text_original", "text_gold", "text_idk_reference",
                     "text_unlearn", "text_eval", "metrics", "text_attack", "attack_metrics",
                     "leaderboard"}  # fmt: skip
    for rule in ("text_gold", "text_unlearn", "text_idk_reference", "text_eval"):
        splits = {j["wildcards"]["split"] for j in jobs if j["rule"] == rule}
        assert splits == {"forget01", "forget05", "forget10"}, rule
    (base,) = [j for j in jobs if j["rule"] == "text_base"]
    assert f'"checkpoint": "{MISTRAL}"' in base["shell"]
    assert "Llama-2" not in base["shell"]
    unlearn = next(j for j in jobs if j["rule"] == "text_unlearn")
    assert request(unlearn) == merged("config/paper.yaml")["compute"]["resources"]["unlearn"]


def test_paper_mistral_changes_only_the_model_and_tracks():
    llama = merged("config/paper.yaml")
    mistral = merged("config/paper.yaml", "config/paper-mistral.yaml")
    assert mistral["text"]["model"]["checkpoint"] == MISTRAL
    assert mistral["tracks"] == ["text"]
    assert mistral["data"]["splits"] == ["forget01", "forget05", "forget10"]
    for key in ("base", "finetune", "unlearn", "max_len"):
        assert mistral["text"][key] == llama["text"][key], key
    assert mistral["unlearn"] == llama["unlearn"] and mistral["compute"] == llama["compute"]


def with_resources(phase: str | None, key: str | None, value) -> dict:
    config = copy.deepcopy(PARAMS)
    resources = config["compute"]["resources"]
    if key is None:
        del resources[phase]
    else:
        resources[phase][key] = value
    return config


@pytest.mark.parametrize(
    "phase,key,value,needle",
    [
        (
            "unlearn",
            "mem_mb",
            -1,
            "compute.resources.unlearn.mem_mb: -1 is less than the minimum of 0",
        ),
        ("finetune", "gpu", -1, "compute.resources.finetune.gpu: -1 is less than the minimum of 0"),
        ("eval", "runtime", 0, "compute.resources.eval.runtime: 0 is less than the minimum of 1"),
        ("base", "gpu", 0.5, "compute.resources.base.gpu: 0.5 is not of type 'integer'"),
        ("vision_train", None, None, "compute.resources: 'vision_train' is a required property"),
        ("cpu", "runtime_min", 5, "compute.resources.cpu.runtime_min: unknown key (known: gpu,"),
    ],
)
def test_bad_resources_name_the_phase_and_key(phase, key, value, needle):
    with pytest.raises(ConfigError) as err:
        check(with_resources(phase, key, value), root=ROOT)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_key_of_a_phase_is_named():
    config = copy.deepcopy(PARAMS)
    del config["compute"]["resources"]["unlearn"]["runtime"]
    with pytest.raises(ConfigError, match=r"compute\.resources\.unlearn: 'runtime' is a required"):
        check(config, root=ROOT)


def test_snakemake_stops_on_a_bad_request(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("compute:\n  resources:\n    unlearn: {gpu: 1, mem_mb: -5, runtime: 60}\n")
    run = dry_run_with(tmp_path, overlay, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        "error: params error at compute.resources.unlearn.mem_mb: -5 is less than the minimum of 0"
    ]
