"""Scale benchmark: the paper's models timed at the paper's batch sizes, and from those times the
GPU-hours of the whole `paper` reproduction (`python -m clearbench bench-scale`).

What runs (random weights built from configs, nothing downloaded), per job kind:
  text    Llama-2-7B (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000): a LoRA training
          step (the pipeline's `optimize`: AdamW, clipping), a frozen forward (what an unlearning
          method pays for the original or the reference), an evaluation batch (answer NLL) and
          greedy generation with the KV cache (the prefill, then each new token)
  vlm     LLaVA-1.5-7B: that Llama behind CLIP ViT-L/14 at 336 px (576 image tokens, features
          of layer -2, the 2-layer GELU projector), the same measurements with an image per row
  vision  vmapped ensembles of ResNet-18 (`vision.chunk` models, as one vision job trains): a
          training step at the train and the unlearn batch size, one model at the pretraining
          batch size, and an embedding batch (how every vision job scores its models)
Batch sizes, sequence lengths, LoRA, chunk and image size come from the profile (default
config/paper.yaml over params.yaml, as Snakemake layers them). Sequences are max_len long: the
upper bound of a batch padded to the profile's limit (TOFU QA average ~55 Llama tokens, the
longest ~150; `--text-len` measures a typical batch instead).

The estimate: the `paper` DAG's jobs (a Snakemake dry-run) -> for each job, how many of each
measured unit it needs (steps from the paper's data sizes, epochs and batch sizes; passes per
step from each unlearning method's objective) -> the sum of units x measured seconds. `plan_job`
and `estimate` are pure functions of their arguments.

Scales: `paper` (the real sizes, for a GPU) or a scaled-down config of the same architectures for
a CPU (`small`, `tiny`: see SCALES). A CPU or scaled-down measurement gives an extrapolation,
printed as such, never as GPU-hours.
"""

from __future__ import annotations

import copy
import json
import math
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = "config/paper.yaml"
PAPER_HOURS = 84.0  # CLEAR, Ethics: "We utilized 84 hours of A100 GPU computation"
AIM_HOURS = 24.0  # issue 11: the reproduction's aim, in H100-hours
GEN_TOKENS = 8  # new tokens of the timed generation (per-token time extrapolates to max_new_tokens)
EMBED_BATCH = 256  # images per embedding batch of vision scoring (vision.ensemble.embed)

# ---------------------------------------------------------------------------- architectures

LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
LLAMA2_VOCAB = 32000
LLAMA_HEAD_DIM = 128
CLIP_VIT_L_336 = dict(
    image_size=336,
    patch_size=14,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)
CLIP_HEAD_DIM = 64
LLAVA_VOCAB = 32064  # llava-hf/llava-1.5-7b-hf: Llama's 32000, <image>, padding to 64
LLAVA_KEYS = dict(
    vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu"
)
RESNET18 = dict(
    embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"
)


@dataclass(frozen=True)
class Scale:
    """Divisors applied to the paper's sizes. Heads keep their width (Llama 128, CLIP 64), so
    width divides the head count; CLIP keeps 14 px patches, so image tokens fall as image**2;
    ResNet-18 keeps its depths. Language batch sizes stay the paper's."""

    name: str
    width: int = 1  # hidden and MLP sizes of every model
    depth: int = 1  # Llama and CLIP layers
    vocab: int = 1
    seq: int = 1  # text tokens per sequence
    image: int = 1  # image side (CLIP and ResNet)
    models: int = 1  # models of a vision ensemble
    batch: int = 1  # vision batch sizes

    def llama(self) -> dict:
        heads = max(1, LLAMA2_7B["num_attention_heads"] // self.width)
        return LLAMA2_7B | dict(
            hidden_size=heads * LLAMA_HEAD_DIM,
            intermediate_size=LLAMA2_7B["intermediate_size"] // self.width,
            num_hidden_layers=max(1, LLAMA2_7B["num_hidden_layers"] // self.depth),
            num_attention_heads=heads,
        )

    def clip(self) -> dict:
        heads = max(1, CLIP_VIT_L_336["num_attention_heads"] // self.width)
        patch = CLIP_VIT_L_336["patch_size"]
        return CLIP_VIT_L_336 | dict(
            image_size=max(patch, CLIP_VIT_L_336["image_size"] // self.image // patch * patch),
            hidden_size=heads * CLIP_HEAD_DIM,
            intermediate_size=CLIP_VIT_L_336["intermediate_size"] // self.width,
            # feature layer -2 needs two layers
            num_hidden_layers=max(2, CLIP_VIT_L_336["num_hidden_layers"] // self.depth),
            num_attention_heads=heads,
        )

    def resnet(self) -> dict:
        return RESNET18 | dict(
            embedding_size=max(4, RESNET18["embedding_size"] // self.width),
            hidden_sizes=[max(4, h // self.width) for h in RESNET18["hidden_sizes"]],
        )

    def vocab_size(self, vocab: int) -> int:
        return max(64, vocab // self.vocab)

    def tokens(self, n: int) -> int:
        return max(8, n // self.seq)

    def image_side(self, side: int) -> int:
        return max(16, side // self.image)

    def ensemble(self, models: int, batch: int) -> tuple[int, int]:
        return max(1, models // self.models), max(1, batch // self.batch)


SCALES = {
    "paper": Scale("paper"),
    # a CPU minute or two: Llama 4 x 512 (MLP 1376), CLIP 3 x 128 at 112 px (64 image tokens),
    # 128 text tokens, ResNet-18 at 1/8 width on 37 px, 8 models x batch 64
    "small": Scale("small", width=8, depth=8, vocab=8, seq=4, image=3, models=4, batch=4),
    # seconds (the test): Llama 2 x 128, CLIP 2 x 64 at 56 px (16 image tokens), 64 text
    # tokens, ResNet-18 at 1/32 width on 18 px, 4 models x batch 32
    "tiny": Scale("tiny", width=32, depth=16, vocab=32, seq=8, image=6, models=8, batch=8),
}

# ------------------------------------------------------------------------------- the data

# TOFU (the text track and the text half of CLEAR): 200 authors x 20 QA; evaluation tables with
# a paraphrase and 5 perturbed answers (forget, retain_perturbed) or 3 wrong answers.
TOFU = dict(qa=4000, retain_eval=400, real_authors=100, world_facts=117)
QA_OPTIONS = 1 + 1 + 5  # scored sequences per forget/retain sample: answer, paraphrase, perturbed
GENERAL_OPTIONS = 1 + 3  # real_authors, world_facts: answer + 3 wrong
# CLEAR's published copy (therem/CLEAR, dataset card): 3,770 photos of 200 authors (paper: "3,770
# visual question-answer pairs"), forget splits of 35/188/379 photos, 395 retain_perturbed
# photos, 151 real faces, 367 real-world questions. Wrong options per real/facerec question:
# assumed 3 (params data.clear.n_options; the card does not say).
CLEAR = dict(photos=3770, authors=200, retain_eval=395, real_faces=151, real_world=367)
CLEAR_FORGET = {"forget01": 35, "forget05": 188, "forget10": 379}
CHOICE_OPTIONS = 1 + 3

# Passes per unlearning step: (graded forward+backward passes, frozen forwards), read off each
# objective (unlearn/methods.py, vision/methods.py). An unknown method counts as (2, 1).
LM_PASSES = {
    "retain_ft": (1, 0),
    "ga": (1, 0),
    "gd": (2, 0),
    "kl": (2, 1),
    "idk": (2, 0),
    "dpo": (2, 0),  # + the reference's log-likelihoods of the forget set, once per job
    "npo": (1, 1),
    "simnpo": (2, 0),
    "scrub": (2, 2),
    "llmu": (3, 1),
    "rmu": (2, 1),
}
VISION_PASSES = {
    "retain_ft": (1, 0),
    "neggrad": (2, 0),
    "scrub": (2, 2),
    "scrub_bio": (2, 2),
    "twins": (2, 2),
    "sparsity": (1, 0),
    "llmu": (2, 1),
    "rmu": (2, 1),
    "dpo": (1, 1),
    "grad_orth": (2, 0),
}
DEFAULT_PASSES = (2, 1)


def ceil_div(a: float, b: int) -> int:
    return math.ceil(a / b)


def key(track: str, op: str, batch) -> str:
    """A measured unit: `text.train@4`, `vlm.token@16`, `vision.embed@32x256`."""
    return f"{track}.{op}@{batch}"


def text_forget(cfg: dict, split: str) -> int:
    return round(cfg["data"]["forget_fractions"][split] * TOFU["qa"])


def photo_forget(cfg: dict, split: str) -> int:
    if split in CLEAR_FORGET:
        return CLEAR_FORGET[split]
    return round(cfg["data"]["forget_fractions"][split] * CLEAR["photos"])


def vlm_rows(cfg: dict, split: str | None, modality: str = "both", retain: bool = False) -> int:
    """Samples of a CLEAR table (vlm/train.modality_samples): text QA, and per photo a photo QA
    and an identification question. split None: every author; retain: the split's complement."""
    n_text, n_photo = TOFU["qa"], CLEAR["photos"]
    if split is not None:
        forget_text, forget_photo = text_forget(cfg, split), photo_forget(cfg, split)
        n_text, n_photo = (
            (n_text - forget_text, n_photo - forget_photo)
            if retain
            else (forget_text, forget_photo)
        )
    return (n_text if modality in ("text", "both") else 0) + (
        2 * n_photo if modality in ("visual", "both") else 0
    )


def lm_keys(cfg: dict) -> dict[str, dict[str, set]]:
    """Batch sizes each language track is measured at, per operation."""
    t, v = cfg["text"], cfg["vlm"]
    return {
        "text": {
            "train": {t["finetune"]["batch_size"], t["unlearn"]["batch_size"]},
            # the vlm's text-only evaluation rows are the same Llama on text
            "eval": {cfg["eval"]["batch_size"], v["eval"]["batch_size"]},
        },
        "vlm": {
            "train": {v["finetune"]["batch_size"], v["unlearn"]["batch_size"]},
            "eval": {v["eval"]["batch_size"]},
        },
    }


def vision_keys(cfg: dict) -> dict[str, set]:
    """(models, batch) each vision operation is measured at."""
    vis, chunk = cfg["vision"], cfg["vision"]["chunk"]
    u = vis["unlearn"]
    unlearn = {u["batch_size"]} | {
        hp["batch_size"] for hp in (u.get("method_hp") or {}).values() if "batch_size" in hp
    }
    return {
        "train": {(chunk, vis["train"]["batch_size"]), (1, vis["pretrain"]["batch_size"])}
        | {(chunk, b) for b in unlearn},
        "embed": {(chunk, EMBED_BATCH)} | {(chunk, b) for b in unlearn},
    }


# ------------------------------------------------------------------------------ the plan


@dataclass
class Work:
    """What one job needs: measured units (key -> count), its steps (optimizer steps, or
    batches for an evaluation) and a note where it costs nothing or is not estimated."""

    rule: str
    units: dict[str, float] = field(default_factory=dict)
    steps: float = 0
    note: str = ""


def training(track: str, section: dict, rows: float, passes=(1, 0)) -> Work:
    """`section["epochs"]` epochs over `rows` at its batch size; each step `passes` graded and
    frozen passes."""
    bs = section["batch_size"]
    steps = section["epochs"] * ceil_div(rows, bs)
    graded, frozen = passes
    units = {key(track, "train", bs): steps * graded}
    if frozen:
        units[key(track, "frozen", bs)] = steps * frozen
    return Work("", units, steps)


def base_work(spec: dict) -> Work:
    if spec.get("checkpoint"):
        return Work("", note="the checkpoint is the base: nothing trained")
    return Work("", note="base trained from a config: not estimated")


def unlearn_work(track: str, cfg: dict, method: str, rows: int) -> Work:
    section = cfg[track]["unlearn"]
    work = training(track, section, rows, LM_PASSES.get(method, DEFAULT_PASSES))
    if method == "dpo":  # the reference's log p of the IDK and the true answers, once
        k = key(track, "frozen", section["batch_size"])
        work.units[k] = work.units.get(k, 0) + 2 * ceil_div(rows, section["batch_size"])
    return work


def reference_work(track: str, cfg: dict, rows: int) -> Work:
    section = cfg[track]["unlearn"]
    return training(track, section | section["reference"], rows)


def eval_work(tasks: list[tuple[str, float, int]], batch_size: int, max_new: int) -> Work:
    """tasks: (track whose model scores the rows, rows, scored sequences per row). Batches are
    of one kind (the evaluation sorts by length, so text rows and image rows do not mix)."""
    units: dict[str, float] = {}
    steps = 0
    for track, rows, options in tasks:
        if rows <= 0:
            continue
        score, gen = ceil_div(rows * options, batch_size), ceil_div(rows, batch_size)
        for op, n in (("score", score), ("prefill", gen), ("token", gen * (max_new - 1))):
            units[key(track, op, batch_size)] = units.get(key(track, op, batch_size), 0) + n
        steps += score + gen
    return Work("", units, steps)


def capped(rows: float, max_samples: int) -> float:
    return min(rows, max_samples) if max_samples > 0 else rows


def text_eval_work(cfg: dict, split: str) -> Work:
    ev, cap = cfg["eval"], cfg["eval"]["max_samples"]
    tasks = [
        ("text", capped(text_forget(cfg, split), cap), QA_OPTIONS),
        ("text", capped(TOFU["retain_eval"], cap), QA_OPTIONS),
        ("text", capped(TOFU["real_authors"], cap), GENERAL_OPTIONS),
        ("text", capped(TOFU["world_facts"], cap), GENERAL_OPTIONS),
    ]
    return eval_work(tasks, ev["batch_size"], ev["max_new_tokens"])


def vlm_eval_work(cfg: dict, split: str) -> Work:
    """The six vlm tasks (eval/vlm.py); text-only rows run through the same Llama as text."""
    ev = cfg["vlm"]["eval"]
    cap = ev["max_samples"]
    f_text, f_photo = text_forget(cfg, split), photo_forget(cfg, split)
    tasks = []
    for n_text, n_photo, options in (
        (f_text, f_photo, QA_OPTIONS),  # forget: text QA + photo QA
        (TOFU["retain_eval"], CLEAR["retain_eval"], QA_OPTIONS),  # retain
        (0, CLEAR["real_faces"], CHOICE_OPTIONS),
        (0, CLEAR["real_world"], CHOICE_OPTIONS),
        (0, f_photo, CHOICE_OPTIONS),  # forget_facerec
        (0, CLEAR["retain_eval"], CHOICE_OPTIONS),  # retain_facerec
    ):
        share = capped(n_text + n_photo, cap) / (n_text + n_photo)
        tasks += [("text", n_text * share, options), ("vlm", n_photo * share, options)]
    return eval_work(tasks, ev["batch_size"], ev["max_new_tokens"])


def vision_identities(cfg: dict) -> tuple[int, int, float]:
    """(forget side |F| = |H|, other identities, photos per identity): F is the largest forget
    split's authors (workflow/rules/vision.smk), H as many others."""
    frac = max(cfg["data"]["forget_fractions"].values())
    side = round(frac * CLEAR["authors"])
    return side, CLEAR["authors"] - 2 * side, CLEAR["photos"] / CLEAR["authors"]


def vision_scoring(chunk: int) -> dict[str, float]:
    """Every vision job scores its models: an embedding of every photo by every model."""
    return {
        key("vision", "embed", f"{chunk}x{EMBED_BATCH}"): ceil_div(CLEAR["photos"], EMBED_BATCH)
    }


def vision_train_work(cfg: dict, family: str) -> Work:
    """One chunk: its side plus half the others (original), or the half alone (gold)."""
    vis = cfg["vision"]
    side, others, per_id = vision_identities(cfg)
    ids = others // 2 + (side if family == "original" else 0)
    bs, chunk = vis["train"]["batch_size"], vis["chunk"]
    steps = vis["train"]["epochs"] * ceil_div(ids * per_id, bs)
    units = {key("vision", "train", f"{chunk}x{bs}"): steps} | vision_scoring(chunk)
    return Work("", units, steps)


def vision_unlearn_work(cfg: dict, method: str) -> Work:
    """Epochs over each model's forget side, a retain batch with every forget batch."""
    u, chunk = cfg["vision"]["unlearn"], cfg["vision"]["chunk"]
    mhp = (u.get("method_hp") or {}).get(method, {})
    bs, epochs = mhp.get("batch_size", u["batch_size"]), mhp.get("epochs", u["epochs"])
    side, _, per_id = vision_identities(cfg)
    steps = epochs * ceil_div(side * per_id, bs)
    graded, frozen = VISION_PASSES.get(method, DEFAULT_PASSES)
    units = {key("vision", "train", f"{chunk}x{bs}"): steps * graded}
    if frozen:
        units[key("vision", "embed", f"{chunk}x{bs}")] = steps * frozen
    units = merge_units(units, vision_scoring(chunk))
    return Work("", units, steps)


def vision_pretrain_work(cfg: dict) -> Work:
    """One model on the celebrity pool's train identities (data.clear.n_celebs x celeb_images;
    the paper pretrained on 797 Celebs identities)."""
    p, clear = cfg["vision"]["pretrain"], cfg["data"]["clear"]
    images = clear["n_celebs"] * clear["celeb_images"] * (1 - p.get("test_fraction", 0.0))
    steps = p["epochs"] * ceil_div(images, p["batch_size"])
    return Work("", {key("vision", "train", f"1x{p['batch_size']}"): steps}, steps)


def merge_units(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a | b}


PLANNERS = {
    "text_base": lambda w, cfg: base_work(cfg["text"]["model"]),
    "text_original": lambda w, cfg: training("text", cfg["text"]["finetune"], TOFU["qa"]),
    "text_gold": lambda w, cfg: training(
        "text", cfg["text"]["finetune"], TOFU["qa"] - text_forget(cfg, w["split"])
    ),
    "text_idk_reference": lambda w, cfg: reference_work("text", cfg, text_forget(cfg, w["split"])),
    "text_unlearn": lambda w, cfg: unlearn_work(
        "text", cfg, w["method"], text_forget(cfg, w["split"])
    ),
    "text_eval": lambda w, cfg: text_eval_work(cfg, w["split"]),
    "vlm_base": lambda w, cfg: base_work(cfg["vlm"]["model"]),
    "vlm_original": lambda w, cfg: training("vlm", cfg["vlm"]["finetune"], vlm_rows(cfg, None)),
    "vlm_gold": lambda w, cfg: training(
        "vlm", cfg["vlm"]["finetune"], vlm_rows(cfg, w["split"], retain=True)
    ),
    "vlm_idk_reference": lambda w, cfg: reference_work("vlm", cfg, vlm_rows(cfg, w["split"])),
    "vlm_unlearn": lambda w, cfg: unlearn_work(
        "vlm", cfg, w["method"], vlm_rows(cfg, w["split"], w["modality"])
    ),
    "vlm_eval": lambda w, cfg: vlm_eval_work(cfg, w["split"]),
    "vision_pretrain": lambda w, cfg: vision_pretrain_work(cfg),
    "vision_train": lambda w, cfg: vision_train_work(cfg, w["family"]),
    "vision_unlearn": lambda w, cfg: vision_unlearn_work(cfg, w["vmethod"]),
}


def plan_job(rule: str, wildcards: dict, cfg: dict) -> Work | None:
    """The work of one DAG job; None for a job that needs no accelerator (data import, metrics,
    collecting scores, reports). Replay rows (a `default`-profile device) are not counted: the
    paper profile has none."""
    planner = PLANNERS.get(rule)
    if planner is None:
        return None
    work = planner(wildcards, cfg)
    work.rule = rule
    return work


# -------------------------------------------------------------------------- the estimate


@dataclass
class Row:
    kind: str
    jobs: int = 0
    steps: float = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # units without a measurement

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    @property
    def steps_per_job(self) -> float:
        return self.steps / self.jobs if self.jobs else 0.0

    @property
    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps else None


def estimate(work: list[Work], seconds: dict[str, float]) -> list[Row]:
    """Rows per job kind (rule; PLANNERS' order, then as first seen): jobs, steps, and seconds =
    the sum over the kind's jobs of units x seconds per unit. A unit without a measurement (it
    ran out of memory) adds nothing and is listed in the row's `missing`."""
    rows: dict[str, Row] = {}
    for w in work:
        row = rows.setdefault(w.rule, Row(w.rule))
        row.jobs += 1
        row.steps += w.steps
        for k, n in w.units.items():
            if k in seconds:
                row.seconds += n * seconds[k]
            elif k not in row.missing:
                row.missing.append(k)
        if w.note and w.note not in row.notes:
            row.notes.append(w.note)
    order = list(PLANNERS)
    rank = lambda r: order.index(r.kind) if r.kind in order else len(order)  # noqa: E731
    return sorted(rows.values(), key=rank)


# ------------------------------------------------------------------------------ the DAG


@dataclass
class Job:
    rule: str
    wildcards: dict[str, str]


def parse_dry_run(text: str) -> list[Job]:
    """Jobs of `snakemake -n` output: a `rule NAME:` (or `localrule NAME:`) line per job, its
    properties indented below it."""
    jobs: list[Job] = []
    for line in text.splitlines():
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line.strip()):
            if not line.startswith(" "):
                jobs.append(Job(m.group(1), {}))
        elif jobs and line.strip().startswith("wildcards:"):
            pairs = line.strip()[len("wildcards:") :].split(",")
            jobs[-1].wildcards = dict(p.strip().split("=", 1) for p in pairs if "=" in p)
    return jobs


def dag_jobs(configfile: Path) -> list[Job]:
    """Every job of the profile's default target, from a dry-run in an empty working directory
    (nothing already built is skipped). The job list does not depend on the device, so the dry
    run asks for `auto`: a machine without a GPU must not stop at the profile's device check."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--nocolor",
               "--snakefile", str(ROOT / "Snakefile"), "--directory", tmp,
               "--configfile", str(configfile), "--config", 'compute={"device": "auto"}']  # fmt: skip
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"snakemake dry-run of {configfile} failed: {' / '.join(tail)}")
    return parse_dry_run(done.stdout)


def load_config(configfile: str | Path) -> dict:
    """params.yaml with the profile overlaid (deep merge), as Snakemake's --configfile does."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    path = Path(configfile)
    if path.resolve() != (ROOT / "params.yaml").resolve():
        overlay(cfg, yaml.safe_load(path.read_text()) or {})
    return cfg


def overlay(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            overlay(base[k], v)
        else:
            base[k] = v
    return base


# ---------------------------------------------------------------------------- measurement


@dataclass
class Timing:
    """One measured unit: median seconds, what it processes (tokens or model-images) and the
    peak memory of the job kind that measured it."""

    key: str
    seconds: float
    items: float
    unit: str  # tok | img (model-images: images x models of the ensemble)
    shape: str
    peak_mb: float | None
    repeats: int

    @property
    def per_second(self) -> float:
        return self.items / self.seconds


@dataclass
class Env:
    device: object  # torch.device
    dtype: object  # torch.dtype
    steps: int
    gradient_checkpointing: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def repeat(self, fn) -> float:
        """Median seconds of `steps` calls after one warm-up call."""
        fn()
        times = []
        for _ in range(self.steps):
            start = self.now()
            fn()
            times.append(self.now() - start)
        return statistics.median(times)

    def memory(self):
        return Memory(self)


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Memory:
    """Peak memory of one job kind: CUDA's max_memory_allocated since the start, or on a CPU the
    growth of the process's peak RSS (a lower bound: memory freed by an earlier kind is reused)."""

    def __init__(self, env: Env):
        self.device = env.device
        if env.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(env.device)
            self.start = 0.0
        else:
            self.start = rss_peak_mb()

    def peak(self) -> float | None:
        from clearbench.compute import peak_memory_mb

        if self.device.type == "cuda":
            return peak_memory_mb(self.device)
        return rss_peak_mb() - self.start


def memory_source(env: Env) -> str:
    if env.cuda:
        return "torch.cuda.max_memory_allocated per job kind"
    return "cpu: growth of the process's peak RSS per job kind (a lower bound)"


@contextmanager
def building(env: Env):
    """Parameters created directly on the device in the dtype: a 7B model never passes through
    float32 in host memory."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(env.dtype)
    try:
        with torch.device(env.device):
            yield
    finally:
        torch.set_default_dtype(old)


def free(env: Env) -> None:
    import gc

    gc.collect()
    if env.cuda:
        import torch

        torch.cuda.empty_cache()


@dataclass
class LMShape:
    """The shape of a language batch: vocabulary, text tokens, image tokens and image side per
    row (the last two 0 for text)."""

    vocab: int
    text_len: int
    n_image: int = 0
    image_side: int = 0

    @property
    def seq_len(self) -> int:
        return self.n_image + self.text_len

    @property
    def prompt_len(self) -> int:  # generation prompts: a question, a quarter of the sequence
        return self.n_image + max(4, self.text_len // 4)

    def batch(self, rows: int, text_len: int | None = None, labels: bool = True) -> dict:
        """Random ids: BOS, the image placeholders, then text; the second half of the text is
        the scored answer."""
        import torch

        gen = torch.Generator().manual_seed(rows)
        n = self.text_len if text_len is None else text_len
        image_token = self.vocab - 1
        text = torch.randint(3, image_token, (rows, n), generator=gen)
        text[:, 0] = 1  # BOS
        images = torch.full((rows, self.n_image), image_token)
        ids = torch.cat([text[:, :1], images, text[:, 1:]], 1)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if labels:
            out["labels"] = ids.clone()
            out["labels"][:, : self.n_image + n // 2] = -100
        if self.n_image:
            out["pixel_values"] = torch.randn(
                rows, 3, self.image_side, self.image_side, generator=gen
            )
        return out

    def prompts(self, rows: int) -> dict:
        return self.batch(rows, self.prompt_len - self.n_image, labels=False)


def lm_eval(model, track: str, shape: LMShape, batch_size: int, env: Env, nll) -> list[Timing]:
    """One evaluation batch: answer NLL (`nll(model, batch)`) of `batch_size` sequences, then
    greedy generation from `batch_size` prompts (KV cache): the prefill with the first token,
    then each further token."""
    import torch

    from clearbench.compute import to_device

    mem = env.memory()
    batch = to_device(shape.batch(batch_size), model)
    prompts = to_device(shape.prompts(batch_size), model)

    def generate(n):
        model.generate(**prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       use_cache=True, pad_token_id=0, eos_token_id=2)  # fmt: skip

    with torch.no_grad():
        score_s = env.repeat(lambda: nll(model, batch))
        first = env.repeat(lambda: generate(1))
        full = env.repeat(lambda: generate(GEN_TOKENS))
    token = (full - first) / (GEN_TOKENS - 1)
    if token <= 0:  # timer noise on a tiny model: the mean over the whole generation
        token = full / GEN_TOKENS
    peak, b = mem.peak(), batch_size
    return [
        Timing(key(track, "score", b), score_s, b * shape.seq_len, "tok",
               f"{b}x{shape.seq_len}", peak, env.steps),
        Timing(key(track, "prefill", b), first, b * shape.prompt_len, "tok",
               f"{b}x{shape.prompt_len}", peak, env.steps),
        Timing(key(track, "token", b), token, b, "tok", f"{b}x1 (KV cache)", peak, env.steps),
    ]  # fmt: skip


def lm_train(model, track: str, shape: LMShape, batch_size: int, env: Env, nll) -> list[Timing]:
    """A LoRA training step of answer NLL through the pipeline's `optimize`, timed between
    consecutive steps: one warm-up step, `steps` timed steps, one more to close the last
    interval. Then a frozen forward with the adapter disabled, as an unlearning objective runs
    the original."""
    import torch

    from clearbench.compute import to_device
    from clearbench.train.loop import optimize
    from clearbench.train.qa import answer_outputs

    mem = env.memory()
    batch = to_device(shape.batch(batch_size), model)
    ticks = []

    def step_loss(_):
        ticks.append(env.now())
        return nll(model, batch).mean()

    k = key(track, "train", batch_size)
    optimize(model, range(env.steps + 2), step_loss, lr=1e-5, weight_decay=0.01, desc=k)
    step_s = statistics.median([b - a for a, b in zip(ticks[1:], ticks[2:], strict=False)])

    def frozen():
        with model.disable_adapter(), torch.no_grad():
            answer_outputs(model, batch)

    frozen_s = env.repeat(frozen)
    peak, tokens, b = mem.peak(), batch_size * shape.seq_len, batch_size
    return [
        Timing(k, step_s, tokens, "tok", f"{b}x{shape.seq_len}", peak, env.steps),
        Timing(key(track, "frozen", b), frozen_s, tokens, "tok", f"{b}x{shape.seq_len}", peak,
               env.steps),
    ]  # fmt: skip


def lm_model(track: str, scale: Scale, env: Env):
    """Llama-2-7B (text) or LLaVA-1.5-7B (vlm) with random weights, and its batch shape (without
    the text length, which the caller sets)."""
    from clearbench.models.factory import build_model

    if track == "text":
        vocab = scale.vocab_size(LLAMA2_VOCAB)
        spec = {"config": scale.llama()}
        with building(env):
            model = build_model(spec, vocab_size=vocab, seed=0)
        return model.eval(), LMShape(vocab, 0)
    vocab = scale.vocab_size(LLAVA_VOCAB)
    clip = scale.clip()
    spec = {"config": {"vision_config": clip, "text_config": scale.llama(), **LLAVA_KEYS}}
    with building(env):
        model = build_model(spec, vocab_size=vocab, seed=0, image_token_id=vocab - 1)
    n_image = (clip["image_size"] // clip["patch_size"]) ** 2
    return model.eval(), LMShape(vocab, 0, n_image, clip["image_size"])


def lm_lora(track: str, cfg: dict) -> dict:
    from clearbench.train.vlm import frozen_tower_lora

    section = cfg[track]["finetune"]
    lora = dict(section["lora"])
    return lora | (frozen_tower_lora(section) if track == "vlm" else {})


def answers_nll(model, batch):
    from clearbench.train.qa import answer_outputs

    return answer_outputs(model, batch).nll()


def attempt(fn, keys: list[str], failed: dict, env: Env, cleanup=None) -> list[Timing]:
    """fn's timings; out of memory is a result (the kind's keys in `failed`), not a crash."""
    import torch

    try:
        return fn()
    except (torch.cuda.OutOfMemoryError, MemoryError):
        progress(f"out of memory: {', '.join(keys)}")
        failed.update(dict.fromkeys(keys, "out of memory"))
    # out of the handler: the traceback, and the tensors its frames hold, are gone
    if cleanup:
        cleanup()
    free(env)
    return []


def bench_language(
    track: str, cfg: dict, scale: Scale, env: Env, text_len: int | None, failed: dict
) -> list[Timing]:
    """Both job kinds of a language track on one model: evaluation first (the bare model, as an
    evaluation job loads it merged), then LoRA training (peft wraps the model in place)."""
    from clearbench.train.qa import sequence_nll
    from clearbench.train.text import add_lora, prepare_for_training

    model, shape = lm_model(track, scale, env)
    shape.text_len = text_len or scale.tokens(cfg[track]["max_len"])
    # as each track's finetuning and evaluation compute it: the text track over the full
    # logits (train/qa.sequence_nll), the vlm with the LM head on the answer positions only
    nll = sequence_nll if track == "text" else answers_nll
    out = []
    for b in sorted(lm_keys(cfg)[track]["eval"]):
        progress(f"{track} eval batch {b} x {shape.seq_len} tokens")
        keys = [key(track, op, b) for op in ("score", "prefill", "token")]
        out += attempt(partial(lm_eval, model, track, shape, b, env, nll), keys, failed, env)
    compute = {"device": env.device.type, "dtype": str(env.dtype).removeprefix("torch."),
               "quantize": "none", "gradient_checkpointing": env.gradient_checkpointing}  # fmt: skip
    model = add_lora(prepare_for_training(model, compute), lm_lora(track, cfg))
    for b in sorted(lm_keys(cfg)[track]["train"]):
        progress(f"{track} LoRA train step batch {b} x {shape.seq_len} tokens")
        keys = [key(track, "train", b), key(track, "frozen", b)]
        run_step = partial(lm_train, model, track, shape, b, env, nll)
        out += attempt(run_step, keys, failed, env, cleanup=model.zero_grad)
    del model
    free(env)
    return out


class Ticked:
    """A vision task whose every loss call is timed (run_steps has no other hook)."""

    def __init__(self, task, env: Env):
        self.task, self.env, self.ticks = task, env, []
        self.n_steps = task.n_steps

    def loss(self, t, rows, student, ctx):
        self.ticks.append(self.env.now())
        return self.task.loss(t, rows, student, ctx)


def vision_ensemble(cfg: dict, scale: Scale, n_models: int):
    """`n_models` ResNet-18 identity models stacked for vmap (as vision jobs build them)."""
    from clearbench.vision import ensemble as ens
    from clearbench.vision import model as vm

    dim = cfg["vision"]["model"].get("embedding_dim", 512)
    spec = {"config": scale.resnet(), "embedding_dim": max(4, dim // scale.width)}
    base = vm.build_model(spec, CLEAR["authors"], seed=0)
    nets = [copy.deepcopy(base).new_classes(CLEAR["authors"], k) for k in range(n_models)]
    return ens.stack(nets)


def vision_train(cfg, scale, env, models: int, batch: int) -> Timing:
    """Training steps of an ensemble (margin softmax over half the identities, as a protocol
    model trains), timed between consecutive steps; pixels stay on the host as in the jobs."""
    import numpy as np
    import torch

    from clearbench.vision import ensemble as ens
    from clearbench.vision.protocol import opt_of

    m, b = scale.ensemble(models, batch)
    side = scale.image_side(cfg["vision"]["image_size"])
    progress(f"vision train step {m} models x batch {b} at {side} px")
    mem = env.memory()
    state = vision_ensemble(cfg, scale, m)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(2 * b, 3, side, side, generator=gen)
    own = CLEAR["authors"] // 2  # a protocol model trains on about half the identities
    labels = torch.randint(own, (2 * b,), generator=gen).numpy()
    mask = np.zeros((m, CLEAR["authors"]), bool)
    mask[:, :own] = True
    plan = ens.index_plan([np.arange(2 * b)] * m, env.steps + 2, b, list(range(m)))
    task = Ticked(ens.IdentityTask(pixels, labels, plan, mask, cfg["vision"].get("loss")), env)
    ens.run_steps(state, task, opt_of(cfg["vision"]["train"]), m > 1, device=env.device)
    step_s = statistics.median(
        [y - x for x, y in zip(task.ticks[1:], task.ticks[2:], strict=False)]
    )
    return Timing(key("vision", "train", f"{models}x{batch}"), step_s, m * b, "img",
                  f"{m}x{b}x{side}px", mem.peak(), env.steps)  # fmt: skip


def vision_embed(cfg, scale, env, models: int, batch: int) -> Timing:
    """One eval-mode embedding batch of the ensemble (scoring; an unlearning method's teacher),
    the pixels copied to the device per batch as vision.ensemble.embed does."""
    import torch

    from clearbench.vision import ensemble as ens
    from clearbench.vision import model as vm

    m, b = scale.ensemble(models, batch)
    side = scale.image_side(cfg["vision"]["image_size"])
    progress(f"vision embedding batch {m} models x batch {b} at {side} px")
    mem = env.memory()
    state = vision_ensemble(cfg, scale, m).to(env.device)
    fwd = ens.make_forward(vm.template(state.config), m > 1)
    pixels = torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        seconds = env.repeat(lambda: fwd(state.params, state.buffers, pixels.to(env.device), False))
    return Timing(key("vision", "embed", f"{models}x{batch}"), seconds, m * b, "img",
                  f"{m}x{b}x{side}px", mem.peak(), env.steps)  # fmt: skip


def one(fn, *args) -> list[Timing]:
    return [fn(*args)]


def bench_vision(cfg: dict, scale: Scale, env: Env, failed: dict) -> list[Timing]:
    out = []
    for op, fn in (("train", vision_train), ("embed", vision_embed)):
        for m, b in sorted(vision_keys(cfg)[op]):
            k = key("vision", op, f"{m}x{b}")
            out += attempt(partial(one, fn, cfg, scale, env, m, b), [k], failed, env)
            free(env)
    return out


def measure(
    cfg: dict, scale: Scale, env: Env, text_len: int | None = None
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Every unit the profile's tracks need, measured on `env`'s device, and the units that
    could not be measured (key -> why)."""
    import torch

    torch.manual_seed(0)
    out: list[Timing] = []
    failed: dict[str, str] = {}
    for track in ("text", "vlm"):
        if track in cfg["tracks"]:
            out += bench_language(track, cfg, scale, env, text_len, failed)
    if "vision" in cfg["tracks"]:
        out += bench_vision(cfg, scale, env, failed)
    return {t.key: t for t in out}, failed


def progress(msg: str) -> None:
    print(f"bench-scale: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- printing


def format_measurements(timings: dict[str, Timing], failed: dict[str, str], header: str) -> str:
    lines = [header, f"{'unit':24} {'shape':22} {'s/unit':>10} {'throughput':>16} {'peak MB':>9}"]
    for t in timings.values():
        peak = "-" if t.peak_mb is None else f"{t.peak_mb:,.0f}"
        rate = f"{t.per_second:,.0f} {t.unit}/s"
        lines.append(f"{t.key:24} {t.shape:22} {t.seconds:10.4f} {rate:>16} {peak:>9}")
    lines += [f"{k:24} {why.upper()}" for k, why in failed.items()]
    return "\n".join(lines)


def format_estimate(rows: list[Row], hours_label: str, skipped: dict[str, int]) -> str:
    lines = [
        "steps: optimizer steps (training) or batches (evaluation: scoring and generation);"
        " s/step: every pass of a step",
        f"{'job kind':20} {'jobs':>5} {'steps/job':>10} {'s/step':>9} {'hours':>10}",
    ]
    for r in rows:
        sps = "-" if r.seconds_per_step is None else f"{r.seconds_per_step:.4f}"
        notes = r.notes + ([f"INCOMPLETE: no {', '.join(r.missing)}"] if r.missing else [])
        note = f"  ({'; '.join(notes)})" if notes else ""
        lines.append(f"{r.kind:20} {r.jobs:5d} {r.steps_per_job:10.0f} {sps:>9} "
                     f"{r.hours:10.3f}{note}")  # fmt: skip
    total = sum(r.hours for r in rows)
    incomplete = (
        " (INCOMPLETE: units without a measurement)" if any(r.missing for r in rows) else ""
    )
    lines.append(f"{'total':20} {sum(r.jobs for r in rows):5d} {'':10} {'':>9} {total:10.3f}"
                 f"  {hours_label}{incomplete}")  # fmt: skip
    lines.append(
        f"paper (CLEAR, Ethics): {PAPER_HOURS:g} A100-hours; aim: {AIM_HOURS:g} H100-hours"
    )
    if skipped:
        jobs = ", ".join(f"{rule} {n}" for rule, n in skipped.items())
        lines.append(f"not counted (no accelerator: data, metrics, reports): {jobs}")
    return "\n".join(lines)


def hours_label(env: Env, scale: Scale) -> tuple[str, bool]:
    """What the estimate's hours are, and whether they are GPU-hours of the paper's models."""
    if env.cuda and scale.name == "paper":
        import torch

        return f"{torch.cuda.get_device_name(env.device)} GPU-hours", True
    where = "a CPU" if not env.cuda else "a GPU with scaled-down models"
    return f"hours on {where} (scale {scale.name}): NOT GPU-hours", False


def warning(env: Env, scale: Scale) -> str:
    bar = "!" * 78
    what = f"{env.device.type}, scale {scale.name}"
    return "\n".join([
        bar,
        f"!! {'CPU' if not env.cuda else 'SCALED-DOWN'} EXTRAPOLATION ({what}): NOT GPU-HOURS.",
        "!! These hours are what the paper DAG's jobs would take with THESE models on THIS",
        "!! device. For GPU-hours run `python -m clearbench bench-scale` on a GPU (scale paper).",
        bar,
    ])  # fmt: skip


# ------------------------------------------------------------------------------------ run


def run(
    configfile: str | Path = DEFAULT_CONFIG,
    device: str = "auto",
    dtype: str | None = None,
    scale: str = "auto",
    steps: int = 3,
    gradient_checkpointing: bool | None = None,
    text_len: int | None = None,
    out: str | Path | None = None,
    with_estimate: bool = True,
) -> dict:
    """Measure, estimate, print (tables on stdout, progress on stderr); the summary as a dict
    (also written to `out` as JSON with every measurement)."""
    from clearbench.compute import resolve_device, torch_dtype

    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    path = Path(configfile)
    path = (path if path.is_absolute() or path.exists() else ROOT / path).resolve()
    cfg = load_config(path)
    dev = resolve_device(device)
    dtype = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    scale_name = ("paper" if dev.type == "cuda" else "small") if scale == "auto" else scale
    if scale_name not in SCALES:
        raise ValueError(f"--scale must be one of auto, {', '.join(SCALES)}, got '{scale}'")
    sc = SCALES[scale_name]
    if gradient_checkpointing is None:
        gradient_checkpointing = bool(cfg["compute"].get("gradient_checkpointing", False))
    env = Env(dev, torch_dtype(dtype), steps, gradient_checkpointing)

    jobs, dag_error = [], None
    if with_estimate:  # the DAG first: a broken profile stops before minutes of measuring
        progress(f"dry-run of the DAG of {path.name}")
        try:
            jobs = dag_jobs(path)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            dag_error = str(err)
            progress(f"error: {err}")
    timings, failed = measure(cfg, sc, env, text_len)
    header = (f"measurements: {dev.type}, {dtype}, scale {sc.name}, median of {steps} after a "
              f"warm-up, gradient checkpointing {'on' if gradient_checkpointing else 'off'}; "
              f"memory: {memory_source(env)}")  # fmt: skip
    print(format_measurements(timings, failed, header))
    summary = {
        "configfile": str(path),
        "device": dev.type,
        "dtype": dtype,
        "scale": asdict(sc),
        "steps": steps,
        "gradient_checkpointing": gradient_checkpointing,
        "memory": memory_source(env),
        "measurements": [asdict(t) | {"per_second": t.per_second} for t in timings.values()],
        "failed": failed,
    }
    if jobs:
        work, skipped = [], {}
        for job in jobs:
            w = plan_job(job.rule, job.wildcards, cfg)
            if w is None:
                skipped[job.rule] = skipped.get(job.rule, 0) + 1
            else:
                work.append(w)
        rows = estimate(work, {k: t.seconds for k, t in timings.items()})
        label, gpu_hours = hours_label(env, sc)
        print()
        print(f"estimate: the {cfg.get('profile', path.stem)} DAG ({path.name}), {len(jobs)} jobs")
        print(format_estimate(rows, label, skipped))
        if cfg.get("profile") != "paper":
            print("note: the jobs' work uses the paper's data sizes (TOFU, the published CLEAR),"
                  f" not those of the {cfg.get('profile')} profile")  # fmt: skip
        if not gpu_hours:
            print(warning(env, sc))
        total = sum(r.hours for r in rows)
        summary |= {
            "estimate": [asdict(r) | {"hours": r.hours} for r in rows],
            "not_counted": skipped,
            "total_hours": total,
            "hours_unit": label,
            "gpu_hours": gpu_hours,
            "paper_a100_hours": PAPER_HOURS,
            "aim_h100_hours": AIM_HOURS,
        }
    if dag_error:
        summary["dag_error"] = dag_error
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
