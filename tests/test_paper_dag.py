"""The `paper` profile's DAG: the dry-run's job count per rule equals the count worked out here
from the profile's parameters (splits x methods x l1 x modalities, the modality study, M/chunk
vision chunks per family), it holds the paper's setup, and Snakemake builds it in under 30 s."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from snakemake.utils import update_config

from clearbench.unlearn.registry import DECLARED as METHODS

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config/paper.yaml"
BUILD_LIMIT_S = 30.0


def paper_config() -> dict:
    """params.yaml with config/paper.yaml overlaid, as Snakemake's --configfile does."""
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    update_config(config, yaml.safe_load(PROFILE.read_text()))
    return config


def expected_counts(config: dict) -> dict[str, int]:
    """Jobs per rule of `rule all` in an empty working directory, from the parameters alone."""
    tracks = config["tracks"]
    splits = config["data"]["splits"]
    unlearn = config["unlearn"]
    methods = unlearn["methods"]
    on = lambda track: [m for m in methods if track in METHODS[m].tracks]  # noqa: E731
    trained = lambda track: [m for m in on(track) if not METHODS[m].edit]  # noqa: E731
    edits = lambda track: [m for m in on(track) if METHODS[m].edit]  # noqa: E731
    l1 = lambda track: set(config[track]["unlearn"].get("l1", unlearn["l1"]))  # noqa: E731
    # one run per (method, l1, modality): text in its own modality; vlm in every modality of
    # the matrix, plus the modality study's methods in its modalities without l1 (Table 3); a
    # training-free edit once per track it runs on, without l1, in its own modality
    text_runs = {(m, x, "text") for m in trained("text") for x in l1("text")}
    text_runs |= {(m, False, "text") for m in edits("text")}
    study = unlearn["modality_study"]
    vlm_runs = {(m, x, mod) for m in trained("vlm") for x in l1("vlm") for mod in unlearn["modalities"]}  # fmt: skip
    vlm_runs |= {(m, False, mod) for m in study["methods"] if m in trained("vlm") for mod in study["modalities"]}  # fmt: skip
    vlm_runs |= {(m, False, METHODS[m].modality) for m in edits("vlm")}
    # DPO's reference: one per split and language track, when a method needs it
    reference = len(splits) if any(METHODS[m].reference for m in methods) else 0

    # the leaderboard, its HTML page and `all`
    counts = {"text_data": 1, "leaderboard": 1, "html_report": 1, "all": 1}
    if config["data"]["clear"]["build"] or {"vlm", "vision"} & set(tracks):
        counts["clear_data"] = 1
    for track, runs in (("text", text_runs), ("vlm", vlm_runs)):
        if track not in tracks:
            continue
        counts |= {
            f"{track}_base": 1,
            f"{track}_original": 1,
            f"{track}_gold": len(splits),
            f"{track}_idk_reference": reference,
            f"{track}_unlearn": len(splits) * len(runs),
            # original, gold and every unlearned model, per split; then one metrics job each
            f"{track}_eval": len(splits) * (2 + len(runs)),
        }
        counts["metrics"] = counts.get("metrics", 0) + counts[f"{track}_eval"]
        # the attacks: original, gold and every run of an attacked method, per split
        attacks = config["attacks"]
        attacked = [r for r in runs if r[0] in attacks["methods"] and r[1] in attacks["l1"]]
        counts[f"{track}_attack"] = len(splits) * (2 + len(attacked))
        counts["attack_metrics"] = counts.get("attack_metrics", 0) + counts[f"{track}_attack"]
    if "vision" in tracks:
        vision = config["vision"]
        chunks = math.ceil(vision["n_models"] / vision["chunk"])
        families = ["original", "gold", *vision["methods"]]
        counts |= {
            "vision_pretrain": 1,
            "vision_train": 2 * chunks,  # original and gold: every chunk of the M models
            "vision_unlearn": len(vision["methods"]) * chunks,  # each method, every chunk
            "vision_score": len(families),
            "vision_report": 1,
        }
        relearned = ["original", "gold", *vision["attacks"]["methods"]]
        counts |= {
            "vision_relearn": len(relearned) * chunks,
            "vision_relearn_score": len(relearned),
        }
    if "clip" in tracks:
        clip_methods = config["clip"]["methods"]
        counts |= {
            "clip_original": 1,  # evaluated per split in the same job
            "clip_gold": len(splits),
            "clip_unlearn": len(splits) * len(clip_methods),
            "clip_table": len(splits),
        }
    counts = {rule: n for rule, n in counts.items() if n}
    counts["total"] = sum(counts.values())
    return counts


def job_stats(stdout: str) -> dict[str, int]:
    """The first `Job stats:` table of a dry-run: rule -> count, and its `total` row."""
    lines = stdout.splitlines()
    start = lines.index("Job stats:") + 3  # the header and its dashes
    counts = {}
    for line in lines[start:]:
        rule, count = re.fullmatch(r"(\w+)\s+(\d+)", line.strip()).groups()
        counts[rule] = int(count)
        if rule == "total":
            return counts
    raise AssertionError("no total row in the job stats")


def test_paper_profile_is_the_papers_setup():
    """The numbers of CLEAR itself, written out (not read from the profile)."""
    config = paper_config()
    assert config["data"]["splits"] == ["forget01", "forget05", "forget10"]  # 1 %, 5 %, 10 %
    assert set(config["tracks"]) == {"text", "vlm", "vision", "clip"}
    assert set(config["text"]["unlearn"]["l1"]) == {False, True}  # default drops text l1
    unlearn = config["unlearn"]
    table1 = {"retain_ft", "ga", "gd", "kl", "idk", "dpo", "npo", "scrub", "llmu", "rmu"}
    assert table1 <= set(unlearn["methods"])  # Tables 1 and 4 (the profile adds SimNPO)
    assert set(unlearn["l1"]) == {False, True}  # Table 4: without and with the LoRA l1
    assert set(unlearn["modalities"]) == {"text", "visual", "both"}  # Table 3
    vision = config["vision"]
    assert vision["n_models"] == 128  # App. E: 64 models with F, 64 with H
    table2 = {"retain_ft", "scrub", "llmu", "rmu", "dpo", "scrub_bio", "sparsity", "twins"}
    assert table2 <= set(vision["methods"])  # Table 2 (the profile adds NegGrad, grad. orth.)
    clip = config["clip"]  # the CLIP paper's App. I on its ViT-B/32
    assert clip["model"]["checkpoint"] == "openai/clip-vit-base-patch32"
    lip = clip["method_hp"]["lipschitz"]
    assert (lip["lr"], lip["n_synthetic"], lip["n_perturb"]) == (5e-5, 64, 25)


def test_paper_dry_run_counts_and_build_time(tmp_path):
    config = paper_config()
    expected = expected_counts(config)
    # a clean directory: nothing built, every job of `rule all` is listed
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--nocolor",
           "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(PROFILE)]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stderr[-2000:]
    counts = job_stats(run.stdout)

    print(f"\npaper profile dry-run: {seconds:.1f} s (limit {BUILD_LIMIT_S:.0f} s)")
    print(f"{'rule':<20} {'jobs':>6} {'expected':>9}")
    for rule in sorted(set(counts) | set(expected), key=lambda r: (r == "total", r)):
        print(f"{rule:<20} {counts.get(rule, 0):>6} {expected.get(rule, 0):>9}")

    assert counts == expected
    assert seconds < BUILD_LIMIT_S, f"the paper DAG took {seconds:.1f} s to build"
