"""The scale benchmark: a tiny CPU run end to end, and the estimate against hand-computed work."""

from __future__ import annotations

import json
import math

import pytest

from clearbench.cli import main
from clearbench.report import bench_scale as B
from clearbench.report import gpu_hours as G

CPU_RULES = {"text_data", "clear_data", "metrics", "leaderboard", "html_report", "vision_score",
             "attack_metrics", "vision_relearn_score",
             "clip_table",
             "vision_report", "all"}  # fmt: skip


@pytest.fixture(scope="module")
def paper():
    return G.load_config(G.ROOT / G.DEFAULT_CONFIG)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench-scale", "--scale", "tiny", "--steps", "2", "--device", "cpu", "--threads", "1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_tiny_run_measures_every_unit_the_paper_dag_needs(tiny_run, paper):
    got = {m["key"]: m for m in tiny_run["measurements"]}
    lm, vis = G.lm_keys(paper), G.vision_keys(paper)
    want = {
        G.key(t, op, b) for t in lm for b in lm[t]["eval"] for op in ("score", "prefill", "token")
    }
    want |= {G.key(t, op, b) for t in lm for b in lm[t]["train"] for op in ("train", "frozen")}
    want |= {G.key("vision", op, f"{m}x{b}") for op in vis for m, b in vis[op]}
    want |= {G.key("clip", op, b) for op, batches in G.clip_keys(paper).items() for b in batches}
    assert set(got) == want
    for m in got.values():
        assert math.isfinite(m["seconds"]) and m["seconds"] > 0, m
        assert math.isfinite(m["per_second"]) and m["per_second"] > 0, m
    assert tiny_run["device"] == "cpu" and tiny_run["scale"]["name"] == "tiny"


def test_tiny_run_estimates_every_gpu_job_and_says_it_is_not_gpu_hours(tiny_run):
    assert "dag_error" not in tiny_run
    assert set(tiny_run["not_counted"]) <= CPU_RULES  # a new GPU rule needs a planner
    rows = {r["kind"]: r for r in tiny_run["estimate"]}
    assert {"text_unlearn", "text_eval", "vlm_unlearn", "vlm_eval", "vision_train"} <= set(rows)
    assert rows["text_unlearn"]["jobs"] == 66 and rows["vision_unlearn"]["jobs"] == 44
    assert rows["text_base"]["seconds"] == 0  # the paper profile's base is the checkpoint
    assert tiny_run["total_hours"] > 0 and not tiny_run["gpu_hours"]
    assert "NOT GPU-hours" in tiny_run["hours_unit"]
    assert rows["clip_unlearn"]["jobs"] == 15 and not rows["clip_unlearn"]["missing"]


def test_estimate_sums_units_times_seconds():
    work = [
        G.Work("text_unlearn", {"text.train@4": 100, "text.frozen@4": 50}, 100),
        G.Work("vision_train", {"vision.train@32x256": 160, "vision.embed@32x256": 15}, 160),
        G.Work("text_unlearn", {"text.train@4": 100, "text.frozen@4": 50}, 100),
        G.Work("text_base", note="the checkpoint is the base: nothing trained"),
    ]
    seconds = {"text.train@4": 0.5, "text.frozen@4": 0.2, "vision.train@32x256": 1.0,
               "vision.embed@32x256": 0.4}  # fmt: skip
    rows = {r.kind: r for r in G.estimate(work, seconds)}
    assert list(rows) == ["text_base", "text_unlearn", "vision_train"]  # PLANNERS' order
    assert rows["text_unlearn"].jobs == 2 and rows["text_unlearn"].steps == 200
    assert rows["text_unlearn"].seconds == pytest.approx(2 * (100 * 0.5 + 50 * 0.2))  # 120 s
    assert rows["text_unlearn"].seconds_per_step == pytest.approx(0.6)
    assert rows["vision_train"].seconds == pytest.approx(160 * 1.0 + 15 * 0.4)  # 166 s
    assert rows["text_base"].hours == 0 and rows["text_base"].notes
    assert sum(r.hours for r in rows.values()) == pytest.approx(286 / 3600)
    # a unit that could not be measured (out of memory) adds nothing and is named
    (row,) = G.estimate([G.Work("vlm_unlearn", {"vlm.train@2": 3, "text.train@4": 2}, 3)], seconds)
    assert row.seconds == pytest.approx(1.0) and row.missing == ["vlm.train@2"]


def test_plan_follows_the_paper_sizes(paper):
    def plan(rule, **wildcards):
        return G.plan_job(rule, wildcards, paper)

    # TOFU 4000 QA, 5 epochs at batch 4
    assert plan("text_original").units == {"text.train@4": 5000}
    assert plan("text_gold", split="forget10").units == {"text.train@4": 5 * 900}
    # forget10 = 400 QA: 100 batches x 5 epochs, two graded passes per step (forget, retain)
    gd = plan("text_unlearn", method="gd", split="forget10", l1="l1", modality="text")
    assert gd.steps == 500 and gd.units == {"text.train@4": 1000}
    # DPO: + the reference's log p of the IDK and the true answers, once per forget batch
    dpo = plan("text_unlearn", method="dpo", split="forget01", l1="nol1", modality="text")
    assert dpo.units == {"text.train@4": 2 * 50, "text.frozen@4": 2 * 10}
    # vlm: 188 forget05 photos, a photo QA and an identification each; batch 2, 5 epochs; KL
    kl = plan("vlm_unlearn", method="kl", split="forget05", l1="nol1", modality="visual")
    assert kl.units == {"vlm.train@2": 2 * 940, "vlm.frozen@2": 940}
    # vlm original: 4000 text QA + 2 x 3770 photo samples, 3 epochs at batch 12
    assert plan("vlm_original").units == {"vlm.train@12": 3 * math.ceil(11540 / 12)}
    # text eval of forget10: 400 forget + 400 retain x 7 options, 100 + 117 x 4, batch 16
    ev = plan("text_eval", split="forget10", model="original")
    assert ev.units == {"text.score@16": 175 + 175 + 25 + 30, "text.prefill@16": 25 + 25 + 7 + 8,
                        "text.token@16": (25 + 25 + 7 + 8) * 127}  # fmt: skip
    # vision: 100 of 200 identities x 18.85 photos, batch 256, 20 epochs; scoring 3770 photos
    vt = plan("vision_train", family="original", chunk="0-32")
    assert vt.units == {"vision.train@32x256": 20 * 8, "vision.embed@32x256": 15}
    assert plan("text_base").units == {} and plan("metrics", split="forget10") is None
    # training-free edits cost no step
    assert plan("vlm_unlearn", method="unlink", split="forget10", l1="nol1", modality="visual"
                ).units == {}  # fmt: skip
    assert plan("vision_unlearn", vmethod="unlink", chunk="0-32").units == {}
    # clip: (3770 + 151) x 0.7 training photos, 10 epochs at batch 64
    assert plan("clip_original").units == {"clip.train@64": 10 * math.ceil(3921 * 0.7 / 64)}
    # lipschitz on forget10's 20 authors: 64 synthetic images each, at most 1000 synthesis
    # steps; 30 passes of one step over the 1280 images in batches of 16, 25 perturbed copies
    lip = plan("clip_unlearn", cmethod="lipschitz", split="forget10")
    assert lip.units == {"clip.image@64": 20 * 1000, "clip.image@16": 30 * 80,
                         "clip.embed@400": 30 * 80}  # fmt: skip
    assert plan("clip_unlearn", cmethod="unlink", split="forget10").units == {}


def test_parse_dry_run_reads_rules_and_wildcards():
    text = """Job stats:
job      count
rule text_eval:
    output: results/eval/text/forget01/original.parquet
    wildcards: split=forget01, model=original
    resources: tmpdir=/tmp, gpu=1
localrule all:
    input: results/leaderboard.csv
"""
    jobs = G.parse_dry_run(text)
    assert jobs == [
        ("text_eval", {"split": "forget01", "model": "original"}),
        ("all", {}),
    ]


def test_out_of_memory_is_a_result_not_a_crash():
    import torch

    env = B.Env(torch.device("cpu"), torch.float32, 1, False)
    failed, cleaned = {}, []

    def fails():
        raise MemoryError

    assert B.attempt(fails, ["vlm.train@12"], failed, env, cleanup=lambda: cleaned.append(1)) == []
    assert failed == {"vlm.train@12": "out of memory"} and cleaned == [1]
