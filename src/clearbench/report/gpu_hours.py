"""The GPU-hours of a profile's DAG from measured seconds per unit (bench_scale measures them).

The `paper` DAG's jobs (a Snakemake dry-run) -> for each job, how many of each measured unit it
needs (steps from the paper's data sizes, epochs and batch sizes; passes per step from each
unlearning method's objective) -> the sum of units x measured seconds. A unit is one operation
of a track at one batch size: `text.train@4`, `vlm.token@16`, `vision.embed@32x256`. Everything
here is a pure function of the profile and the measurements.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from snakemake.utils import update_config

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = "config/paper.yaml"
PAPER_HOURS = 84.0  # CLEAR, Ethics: "We utilized 84 hours of A100 GPU computation"
AIM_HOURS = 24.0  # issue 11: the reproduction's aim, in H100-hours
EMBED_BATCH = 256  # images per embedding batch of vision scoring (vision.ensemble.embed)

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
LM_PASSES = {"retain_ft": (1, 0), "ga": (1, 0), "gd": (2, 0), "kl": (2, 1), "idk": (2, 0),
             "dpo": (2, 0),  # + the reference's log-likelihoods of the forget set, once per job
             "npo": (1, 1), "simnpo": (2, 0), "scrub": (2, 2), "llmu": (3, 1),
             "rmu": (2, 1)}  # fmt: skip
VISION_PASSES = {"retain_ft": (1, 0), "neggrad": (2, 0), "scrub": (2, 2), "scrub_bio": (2, 2),
                 "twins": (2, 2), "sparsity": (1, 0), "llmu": (2, 1), "rmu": (2, 1),
                 "dpo": (1, 1), "grad_orth": (2, 0)}  # fmt: skip
DEFAULT_PASSES = (2, 1)


def key(track: str, op: str, batch) -> str:
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
        if retain:
            n_text, n_photo = n_text - forget_text, n_photo - forget_photo
        else:
            n_text, n_photo = forget_text, forget_photo
    text = n_text if modality in ("text", "both") else 0
    return text + (2 * n_photo if modality in ("visual", "both") else 0)


def lm_keys(cfg: dict) -> dict[str, dict[str, set]]:
    """Batch sizes each language track is measured at, per operation."""
    t, v = cfg["text"], cfg["vlm"]
    relearn = {cfg["attacks"]["relearn"]["batch_size"]} if cfg.get("attacks") else set()
    text_train = {t["finetune"]["batch_size"], t["unlearn"]["batch_size"], *relearn}
    vlm_train = {v["finetune"]["batch_size"], v["unlearn"]["batch_size"], *relearn}
    # the vlm's text-only evaluation rows are the same Llama on text
    text_eval = {cfg["eval"]["batch_size"], v["eval"]["batch_size"]}
    return {
        "text": {"train": text_train, "eval": text_eval},
        "vlm": {"train": vlm_train, "eval": {v["eval"]["batch_size"]}},
    }


def vision_keys(cfg: dict) -> dict[str, set]:
    """(models, batch) each vision operation is measured at."""
    vis, chunk = cfg["vision"], cfg["vision"]["chunk"]
    hps = [vis["unlearn"], *(vis["unlearn"].get("method_hp") or {}).values()]
    unlearn = {(chunk, hp["batch_size"]) for hp in hps if "batch_size" in hp}
    if vis.get("attacks"):
        unlearn.add((chunk, vis["attacks"]["relearn"]["batch_size"]))
    train = {(chunk, vis["train"]["batch_size"]), (1, vis["pretrain"]["batch_size"])}
    return {"train": train | unlearn, "embed": {(chunk, EMBED_BATCH)} | unlearn}


# ------------------------------------------------------------------------------ the plan


@dataclass
class Work:
    """What one job needs: measured units (key -> count), its steps (optimizer steps, or
    batches for an evaluation) and a note where it costs nothing or is not estimated."""

    rule: str
    units: dict[str, float] = field(default_factory=Counter)
    steps: float = 0
    note: str = ""


def training(track: str, section: dict, rows: float, passes=(1, 0)) -> Work:
    """`section["epochs"]` epochs over `rows` at its batch size; each step `passes` graded and
    frozen passes."""
    bs = section["batch_size"]
    steps = section["epochs"] * math.ceil(rows / bs)
    graded, frozen = passes
    units = Counter({key(track, "train", bs): steps * graded})
    if frozen:
        units[key(track, "frozen", bs)] += steps * frozen
    return Work("", units, steps)


def base_work(spec: dict) -> Work:
    if spec.get("checkpoint"):
        return Work("", note="the checkpoint is the base: nothing trained")
    return Work("", note="base trained from a config: not estimated")


# training-free edits (Unlink): a forward pass over a few forget samples per edited layer, no
# optimizer step; seconds on any GPU, counted as nothing
EDITS = ("unlink",)


def unlearn_work(track: str, cfg: dict, method: str, rows: int) -> Work:
    if method in EDITS:
        return Work("", note="training-free edit: a few forward passes")
    section = cfg[track]["unlearn"]
    work = training(track, section, rows, LM_PASSES.get(method, DEFAULT_PASSES))
    if method == "dpo":  # the reference's log p of the IDK and the true answers, once
        bs = section["batch_size"]
        work.units[key(track, "frozen", bs)] += 2 * math.ceil(rows / bs)
    return work


def reference_work(track: str, cfg: dict, rows: int) -> Work:
    section = cfg[track]["unlearn"]
    return training(track, section | section["reference"], rows)


def eval_work(tasks: list[tuple[int, int, int]], ev: dict) -> Work:
    """tasks: (text rows, image rows, scored sequences per row), capped together at max_samples.
    Text rows run through the Llama (the vlm's text-only rows too: the same model on text), image
    rows through the vlm; a batch is of one kind (the evaluation sorts rows by length)."""
    bs, work = ev["batch_size"], Work("")
    for n_text, n_image, options in tasks:
        total = n_text + n_image
        kept = min(total, ev["max_samples"]) if ev["max_samples"] > 0 else total
        for track, n in (("text", n_text), ("vlm", n_image)):
            if n <= 0:
                continue
            rows = n * kept / total
            score, gen = math.ceil(rows * options / bs), math.ceil(rows / bs)
            tokens = gen * (ev["max_new_tokens"] - 1)
            for op, count in (("score", score), ("prefill", gen), ("token", tokens)):
                work.units[key(track, op, bs)] += count
            work.steps += score + gen
    return work


def text_eval_work(cfg: dict, split: str) -> Work:
    tasks = [
        (text_forget(cfg, split), 0, QA_OPTIONS),
        (TOFU["retain_eval"], 0, QA_OPTIONS),
        (TOFU["real_authors"], 0, GENERAL_OPTIONS),
        (TOFU["world_facts"], 0, GENERAL_OPTIONS),
    ]
    return eval_work(tasks, cfg["eval"])


def vlm_eval_work(cfg: dict, split: str) -> Work:
    """The six vlm tasks (eval/vlm.py)."""
    f_photo = photo_forget(cfg, split)
    tasks = [
        (text_forget(cfg, split), f_photo, QA_OPTIONS),  # forget: text QA + photo QA
        (TOFU["retain_eval"], CLEAR["retain_eval"], QA_OPTIONS),  # retain
        (0, CLEAR["real_faces"], CHOICE_OPTIONS),
        (0, CLEAR["real_world"], CHOICE_OPTIONS),
        (0, f_photo, CHOICE_OPTIONS),  # forget_facerec
        (0, CLEAR["retain_eval"], CHOICE_OPTIONS),  # retain_facerec
    ]
    return eval_work(tasks, cfg["vlm"]["eval"])


def attack_work(track: str, cfg: dict, split: str) -> Work:
    """clearbench.attacks on one model: each attack evaluates the forget tasks on the samples
    outside the relearning slice (a probe: once per reworded question, vlm also on a new photo),
    the relearning attacks train `steps` steps first."""
    attacks, kinds = cfg["attacks"], cfg["attacks"]["kinds"]
    kept = 1 - attacks["relearn"]["forget_fraction"]
    n_text, n_photo = text_forget(cfg, split), photo_forget(cfg, split) if track == "vlm" else 0
    ev = cfg["eval"] if track == "text" else cfg["vlm"]["eval"]
    plain = [(round(kept * n_text), round(kept * n_photo), QA_OPTIONS)]
    if track == "vlm":
        plain.append((0, round(kept * n_photo), CHOICE_OPTIONS))  # forget_facerec
    reworded = cfg["data"]["text"]["n_question_paraphrases"]
    probe = [(n * reworded, m * reworded, o) for n, m, o in plain[:1]] + plain
    work = Work("")
    for kind in kinds:
        part = eval_work(probe if kind == "probe" else plain, ev)
        if kind.startswith("relearn"):
            bs, steps = attacks["relearn"]["batch_size"], attacks["relearn"]["steps"]
            part.units[key(track, "train", bs)] += steps
            part.steps += steps
        for unit, count in part.units.items():
            work.units[unit] += count
        work.steps += part.steps
    return work


def vision_relearn_work(cfg: dict) -> Work:
    """`steps` steps of every model of a chunk on its forget side's slice, then scoring."""
    r = cfg["vision"]["attacks"]["relearn"]
    chunk = cfg["vision"]["chunk"]
    units = Counter({key("vision", "train", f"{chunk}x{r['batch_size']}"): r["steps"]})
    units[key("vision", "embed", f"{chunk}x{EMBED_BATCH}")] += math.ceil(
        CLEAR["photos"] / EMBED_BATCH
    )
    return Work("", units, r["steps"])


def vision_identities(cfg: dict) -> tuple[int, int]:
    """(forget side |F| = |H|, other identities): F is the largest forget split's authors
    (workflow/rules/vision.smk), H as many others."""
    side = round(max(cfg["data"]["forget_fractions"].values()) * CLEAR["authors"])
    return side, CLEAR["authors"] - 2 * side


def vision_work(cfg: dict, section: dict, ids: float, passes=(1, 0)) -> Work:
    """Epochs of one chunk's models over `ids` identities; graded passes are training steps,
    frozen ones embedding batches; then the job scores its models (every photo embedded)."""
    chunk, bs = cfg["vision"]["chunk"], section["batch_size"]
    steps = section["epochs"] * math.ceil(ids * (CLEAR["photos"] / CLEAR["authors"]) / bs)
    graded, frozen = passes
    units = Counter({key("vision", "train", f"{chunk}x{bs}"): steps * graded})
    if frozen:
        units[key("vision", "embed", f"{chunk}x{bs}")] += steps * frozen
    scoring = key("vision", "embed", f"{chunk}x{EMBED_BATCH}")
    units[scoring] += math.ceil(CLEAR["photos"] / EMBED_BATCH)
    return Work("", units, steps)


def vision_train_work(cfg: dict, family: str) -> Work:
    """One chunk: its side plus half the others (original), or the half alone (gold)."""
    side, others = vision_identities(cfg)
    ids = others // 2 + (side if family == "original" else 0)
    return vision_work(cfg, cfg["vision"]["train"], ids)


def vision_unlearn_work(cfg: dict, method: str) -> Work:
    """Epochs over each model's forget side, a retain batch with every forget batch."""
    if method in EDITS:
        return Work("", note="training-free edit: a few forward passes per model")
    u = cfg["vision"]["unlearn"]
    section = u | (u.get("method_hp") or {}).get(method, {})
    passes = VISION_PASSES.get(method, DEFAULT_PASSES)
    return vision_work(cfg, section, vision_identities(cfg)[0], passes)


def vision_pretrain_work(cfg: dict) -> Work:
    """One model on the celebrity pool's train identities (data.clear.n_celebs x celeb_images;
    the paper pretrained on 797 Celebs identities)."""
    p, clear = cfg["vision"]["pretrain"], cfg["data"]["clear"]
    images = clear["n_celebs"] * clear["celeb_images"] * (1 - p.get("test_fraction", 0.0))
    steps = p["epochs"] * math.ceil(images / p["batch_size"])
    return Work("", Counter({key("vision", "train", f"1x{p['batch_size']}"): steps}), steps)


def clip_train_photos(cfg: dict, split: str | None = None) -> float:
    """Training photos of the clip track: every author's and famous person's photos less the
    evaluation share, less the split's forget photos for its gold model."""
    keep = 1 - cfg["clip"]["eval_fraction"]
    photos = CLEAR["photos"] + CLEAR["real_faces"]
    return keep * (photos - (CLEAR_FORGET[split] if split else 0))


def clip_train_work(cfg: dict, split: str | None = None) -> Work:
    """Contrastive steps (both towers) of the original or a gold model."""
    t = cfg["clip"]["train"]
    steps = t["epochs"] * math.ceil(clip_train_photos(cfg, split) / t["batch_size"])
    return Work("", Counter({key("clip", "train", t["batch_size"]): steps}), steps)


def clip_hp(cfg: dict, method: str) -> dict:
    """A clip method's hyperparameters as its job runs them: registry defaults, then params."""
    from clearbench.clip.registry import DEFAULTS

    return DEFAULTS[method] | (cfg["clip"].get("method_hp") or {}).get(method, {})


def clip_keys(cfg: dict) -> dict[str, set]:
    """Batch sizes each clip operation is measured at: `train` a contrastive step of both
    towers, `image` a forward and backward pass of the image tower (synthesis, the Lipschitz
    steps), `embed` a forward pass without gradient (the perturbed copies)."""
    out = {"train": {cfg["clip"]["train"]["batch_size"]}, "image": set(), "embed": set()}
    for method in cfg["clip"]["methods"]:
        if method in EDITS:
            continue
        hp = clip_hp(cfg, method)
        if "n_synthetic" in hp:
            out["image"].add(hp["n_synthetic"])
        if method == "amnesiac":
            out["train"].add(hp["batch_size"])
        else:
            out["image"].add(hp["batch_size"])
            out["embed"].add(hp["batch_size"] * hp["n_perturb"])
    return out


def clip_unlearn_work(cfg: dict, method: str, split: str) -> Work:
    """Synthesis (gradient steps on the images, at most synth_steps), then the method's
    updates: Lipschitz-style passes (a graded batch and n_perturb frozen copies of it per step)
    or amnesiac's contrastive epochs. Unlink: a few forward passes."""
    if method in EDITS:
        return Work("", note="training-free edit: a few forward passes")
    hp = clip_hp(cfg, method)
    targets = round(cfg["data"]["forget_fractions"][split] * CLEAR["authors"])
    units, steps = Counter(), 0
    n = targets * hp.get("n_synthetic", 0)
    if "n_synthetic" in hp:
        units[key("clip", "image", hp["n_synthetic"])] += targets * hp["synth_steps"]
    if method == "amnesiac":
        steps = hp["epochs"] * math.ceil(n / hp["batch_size"])
        units[key("clip", "train", hp["batch_size"])] += steps
    else:
        if method == "ulip":
            n = CLEAR_FORGET[split] * (1 - cfg["clip"]["eval_fraction"])
        bs = hp["batch_size"]
        steps = hp["max_iters"] * hp["steps_per_iter"]
        batches = steps * math.ceil(n / bs)
        units[key("clip", "image", bs)] += batches
        units[key("clip", "embed", bs * hp["n_perturb"])] += batches
    return Work("", units, steps)


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
    "clip_original": lambda w, cfg: clip_train_work(cfg),
    "clip_gold": lambda w, cfg: clip_train_work(cfg, w["split"]),
    "clip_unlearn": lambda w, cfg: clip_unlearn_work(cfg, w["cmethod"], w["split"]),
    "text_attack": lambda w, cfg: attack_work("text", cfg, w["split"]),
    "vlm_attack": lambda w, cfg: attack_work("vlm", cfg, w["split"]),
    "vision_relearn": lambda w, cfg: vision_relearn_work(cfg),
}


def plan_job(rule: str, wildcards: dict, cfg: dict) -> Work | None:
    """The work of one DAG job; None for a job that needs no accelerator (data import, metrics,
    collecting scores, reports). Replay rows (a `default`-profile device) are not counted: the
    paper profile has none."""
    if rule not in PLANNERS:
        return None
    work = PLANNERS[rule](wildcards, cfg)
    work.rule = rule
    return work


def plan_dag(jobs: list[tuple[str, dict]], cfg: dict) -> tuple[list[Work], dict[str, int]]:
    """The work of every job that needs an accelerator, and the count per rule of the others."""
    work = [plan_job(rule, wildcards, cfg) for rule, wildcards in jobs if rule in PLANNERS]
    skipped = Counter(rule for rule, _ in jobs if rule not in PLANNERS)
    return work, dict(skipped)


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
    rank = {rule: i for i, rule in enumerate(PLANNERS)}
    return sorted(rows.values(), key=lambda r: rank.get(r.kind, len(rank)))


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


# ------------------------------------------------------------------------------ the DAG


def parse_dry_run(text: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of each job of `snakemake -n` output: a `rule NAME:` (or `localrule
    NAME:`) line per job, its properties indented below it."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in text.splitlines():
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line.strip()):
            if not line.startswith(" "):
                jobs.append((m.group(1), {}))
        elif jobs and line.strip().startswith("wildcards:"):
            pairs = line.strip().removeprefix("wildcards:").split(",")
            jobs[-1][1].update(p.strip().split("=", 1) for p in pairs if "=" in p)
    return jobs


def dag_jobs(configfile: Path) -> list[tuple[str, dict[str, str]]]:
    """Every job of the profile's default target, from a dry-run in an empty working directory
    (nothing already built is skipped)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--nocolor", "--directory", tmp,
               "--snakefile", f"{ROOT}/Snakefile", "--configfile", str(configfile)]  # fmt: skip
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"snakemake dry-run of {configfile} failed: {' / '.join(tail)}")
    return parse_dry_run(done.stdout)


def load_config(configfile: str | Path) -> dict:
    """params.yaml with the profile overlaid, as Snakemake's --configfile does."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    if Path(configfile).resolve() != (ROOT / "params.yaml").resolve():
        update_config(cfg, yaml.safe_load(Path(configfile).read_text()) or {})
    return cfg
