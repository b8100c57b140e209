"""Attacks on an unlearned language model: does the forgotten knowledge come back?

One job per model folder (original, gold or unlearned; text or vlm track) writes one per-sample
table: the section-6 columns of the forget tasks plus `attack`, one block of rows per attack:

  none            the model as it is: the "before" on exactly the same samples
  probe           the forget questions reworded (the QA's `paraphrased_questions`, sample_id
                  `<id>#p<j>`); vlm: the same with the QA's photo, plus the forget QA and the
                  identification question on an eval-only photo of the same person
                  (`<clear>/<split>_probe.parquet` when it exists, sample_id `...#img`)
  q<b>            the merged weights rounded to b bits (symmetric, per output channel), then
                  dequantized: does unlearning survive deployment quantization?
  relearn_forget  a few LoRA steps of plain NLL on a slice of the forget QA (Hu et al. 2024)
  relearn_retain  the same steps on retain samples only (Lynch et al. 2024)

The relearn slice (a seeded fraction of the forget QA, by sample_id) is left out of every
attack's rows, `none` included, so every attack is scored on the same samples. Every attack
starts from a fresh load of the model; a relearn that diverges gives no rows and a note.

    python -m clearbench attack --track text --model DIR --forget QA --retain QA --out X.parquet
    python -m clearbench attack-metrics X.parquet --out Y.json
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from clearbench.compute import compute_hp, to_device
from clearbench.data.text import read_qa
from clearbench.eval.text import EVAL_SCHEMA, pick_samples
from clearbench.io import atomic_path, write_json_atomic
from clearbench.metrics import STATUS_KEY
from clearbench.metrics.text import COLUMNS, TableError, read_table, score_table
from clearbench.models.factory import (
    load_image_processor,
    load_model,
    load_tokenizer,
    read_model_json,
    trusts_remote_code,
)
from clearbench.train.loop import Diverged, optimize
from clearbench.train.qa import collate, encode
from clearbench.train.text import add_lora, epochs_of_batches, prepare_for_training, seeded
from clearbench.train.vqa import Sample, Vision, sequence_nll

ATTACK_SCHEMA = EVAL_SCHEMA.append(pa.field("attack", pa.string()))
RELEARN = ("relearn_forget", "relearn_retain")
QUANTIZED = re.compile(r"q(\d+)")
RELEARN_KEYS = ("steps", "lr", "batch_size", "forget_fraction", "seed")


def default_attacks(hp: dict) -> list[str]:
    bits = hp.get("quantize_bits", [8, 4])
    return ["none", "probe", *(f"q{b}" for b in bits), *RELEARN]


def check_hp(hp: dict, attacks: list[str]) -> None:
    """One line naming the bad key, before any model is loaded."""
    for key in ("seed", "max_len", "max_new_tokens", "batch_size", "max_samples"):
        if key not in hp:
            raise ValueError(f"attack: missing hyperparameter '{key}'")
    for name in attacks:
        m = QUANTIZED.fullmatch(name)
        if name not in ("none", "probe", *RELEARN) and not (m and 2 <= int(m.group(1)) <= 16):
            raise ValueError(f"attack: unknown attack '{name}' in attacks (none, probe, q<bits>"
                             f" with 2..16 bits, {', '.join(RELEARN)})")  # fmt: skip
        if m and compute_hp(hp)["quantize"] != "none":
            raise ValueError(f"attack: {name} rounds plain weights; compute.quantize must be none")
    if any(a in RELEARN for a in attacks):
        relearn = hp.get("relearn")
        if not isinstance(relearn, dict):
            raise ValueError("attack: missing hyperparameter 'relearn' (a relearn attack is asked)")
        for key in RELEARN_KEYS:
            if key not in relearn:
                raise ValueError(f"attack: missing hyperparameter 'relearn.{key}'")
        if not 0 <= relearn["forget_fraction"] < 1:
            raise ValueError("attack: relearn.forget_fraction must be in [0, 1)")
        if "lora" not in hp:
            raise ValueError("attack: missing hyperparameter 'lora' (the relearning adapter)")


# ------------------------------------------------------------------------------ quantization


def round_to_bits(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest, symmetric, one scale per output channel (row), dequantized back to the
    weight's dtype: every entry moves by at most half its row's step max|w_row| / (2^(b-1)-1)."""
    levels = 2 ** (bits - 1) - 1
    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    return (torch.round(w / scale).clamp(-levels, levels) * scale).to(weight.dtype)


@torch.no_grad()
def quantize_(model: torch.nn.Module, bits: int) -> int:
    """Quantize every nn.Linear and nn.Embedding weight in place (a tied LM head once, with its
    embedding); the number of weight tensors rounded. Convolutions (a CLIP tower's patch
    embedding) and norms stay as they are."""
    seen = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding) and module.weight.ndim == 2:
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                module.weight.copy_(round_to_bits(module.weight, bits))
    return len(seen)


# ---------------------------------------------------------------------------- relearning


def relearn_slice(sample_ids, fraction: float, seed: int) -> set[str]:
    """A seeded `fraction` of the QA ids (the same set whatever their order), at least one when
    the fraction is positive, never all (something must be left to evaluate)."""
    ids = sorted(set(sample_ids))
    k = min(max(1, round(fraction * len(ids))) if fraction > 0 else 0, len(ids) - 1)
    chosen = np.random.default_rng(seed).choice(len(ids), size=max(k, 0), replace=False)
    return {ids[i] for i in chosen}


def size_matched(samples: list, n: int, seed: int) -> list:
    """A seeded choice of n samples (all of them when there are fewer)."""
    if n >= len(samples):
        return list(samples)
    keep = np.random.default_rng(seed).choice(len(samples), size=n, replace=False)
    return [samples[i] for i in np.sort(keep)]


def relearn(model, samples: list[Sample], batch_of: Callable, hp: dict, lora: dict, desc: str):
    """`relearn.steps` AdamW steps of answer NLL through a fresh LoRA on the merged model; the
    model with that LoRA merged and the losses. Diverged propagates (the caller notes it)."""
    rl = hp["relearn"]
    gen = seeded(rl["seed"])
    model = add_lora(prepare_for_training(model, compute_hp(hp)), lora)
    epochs = math.ceil(rl["steps"] * rl["batch_size"] / len(samples)) + 1
    steps = islice(epochs_of_batches(samples, rl["batch_size"], epochs, gen), rl["steps"])
    losses = optimize(
        model,
        steps,
        lambda rows: sequence_nll(model, to_device(batch_of(rows), model)).mean(),
        lr=rl["lr"],
        weight_decay=rl.get("weight_decay", 0.0),
        total=rl["steps"],
        desc=desc,
    )
    return model.merge_and_unload().eval(), losses


# ------------------------------------------------------------------------------- samples


@dataclass
class Setup:
    """What a job evaluates and trains on, per track."""

    tasks: dict[str, pd.DataFrame]  # the evaluated forget rows per task (relearn slice left out)
    probes: dict[str, pd.DataFrame]  # reworded questions, eval-only photos
    relearn: list[Sample]  # the relearn slice of the forget QA
    retain: list[Sample]  # retain samples, as many as `relearn`
    sliced: int  # QA in the relearn slice


def qa_id(sample_id: str) -> str:
    """The QA a row comes from: 'photo:a001_q02#p1' -> 'a001_q02'."""
    return sample_id.split("#", 1)[0].split(":", 1)[-1]


def paraphrased_questions(path) -> dict[str, list[str]]:
    """sample_id -> reworded questions, from the QA table's optional `paraphrased_questions`."""
    if "paraphrased_questions" not in pq.read_schema(path).names:
        return {}
    table = pq.read_table(path, columns=["sample_id", "paraphrased_questions"]).to_pylist()
    return {r["sample_id"]: [q for q in r["paraphrased_questions"] or [] if q] for r in table}


def reworded(df: pd.DataFrame, paraphrases: dict[str, list[str]]) -> pd.DataFrame:
    """One row per reworded question, sample_id `<id>#p<j>`; answers and options unchanged."""
    rows = [
        row | {"sample_id": f"{row['sample_id']}#p{j}", "question": q}
        for row in df.to_dict("records")
        for j, q in enumerate(paraphrases.get(qa_id(row["sample_id"]), []))
    ]
    return pd.DataFrame(rows, columns=df.columns)


def evaluated(df: pd.DataFrame, sliced: set[str], hp: dict) -> pd.DataFrame:
    keep = ~df["sample_id"].map(qa_id).isin(sliced)
    return pick_samples(df[keep], hp["max_samples"], hp["seed"])


def text_setup(forget_path, retain_path, hp: dict) -> Setup:
    forget = read_qa(forget_path)
    rl = hp.get("relearn", {})
    sliced = relearn_slice(forget["sample_id"], rl.get("forget_fraction", 0), rl.get("seed", 0))
    rows = evaluated(forget, sliced, hp)
    relearn = [Sample(r.question, r.answer) for r in forget.itertuples() if r.sample_id in sliced]
    retain_qa = read_qa(retain_path)
    retain = [Sample(q, a) for q, a in zip(retain_qa["question"], retain_qa["answer"], strict=True)]
    return Setup(
        tasks={"forget": rows},
        probes={"forget": reworded(rows, paraphrased_questions(forget_path))},
        relearn=relearn,
        retain=size_matched(retain, len(relearn), rl.get("seed", 0)),
        sliced=len(sliced),
    )


def vlm_setup(clear_dir, text_dir, split: str, hp: dict) -> Setup:
    """The vlm forget tasks (forget: text and photo QA; forget_facerec) as vlm-eval builds them;
    the relearn slice in the forget modality "both" (text QA, photo QA, identification)."""
    from clearbench.eval.vlm import facerec_task, qa_task, real_task, task_tables
    from clearbench.train.vlm import id_question, modality_samples, read_photos, training_table

    clear, text = Path(clear_dir), Path(text_dir)
    rl, seed = hp.get("relearn", {}), hp["seed"]
    forget_qa = read_qa(text / f"{split}.parquet")
    sliced = relearn_slice(forget_qa["sample_id"], rl.get("forget_fraction", 0), rl.get("seed", 0))
    every = task_tables(clear, text, split, seed)
    tasks = {t: evaluated(every[t], sliced, hp) for t in ("forget", "forget_facerec")}

    paras = paraphrased_questions(text / f"{split}.parquet")
    probes = {"forget": [reworded(tasks["forget"], paras)], "forget_facerec": []}
    probe_photos = clear / f"{split}_probe.parquet"
    if probe_photos.is_file():  # an eval-only photo of the same person: never trained on
        names = sorted({p["name"] for p in read_photos(clear / "full.parquet")})
        wrong = real_task(clear / "real_faces.parquet", "real_faces")["perturbed_answers"]
        n_wrong = max(map(len, wrong))  # as vlm-eval draws the wrong names
        asked = qa_task(text / f"{split}.parquet", probe_photos)
        asked = asked[asked["sample_id"].str.startswith("photo:")]
        named = facerec_task(probe_photos, names, n_wrong, seed)
        for task, df in (("forget", asked), ("forget_facerec", named)):
            # only the QA evaluated as they are (never the relearn slice, max_samples kept)
            df = df[df["sample_id"].map(qa_id).isin(set(tasks[task]["sample_id"].map(qa_id)))]
            probes[task].append(df.assign(sample_id=df["sample_id"] + "#img"))
    probes = {t: pd.concat(dfs, ignore_index=True) for t, dfs in probes.items() if dfs}

    photos = [p for p in read_photos(clear / f"{split}.parquet") if p["sample_id"] in sliced]
    relearn = [
        Sample(r.question, r.answer) for r in forget_qa.itertuples() if r.sample_id in sliced
    ]
    relearn += [Sample(p["question"], p["answer"], p["image"]["bytes"]) for p in photos]
    relearn += [
        Sample(id_question(seed, p["sample_id"]), p["name"], p["image"]["bytes"]) for p in photos
    ]
    retain = modality_samples(clear, text, training_table(split), "both", seed)
    return Setup(tasks, probes, relearn, size_matched(retain, len(relearn), rl.get("seed", 0)),
                 len(sliced))  # fmt: skip


# ------------------------------------------------------------------------------ the job


@dataclass
class Scorer:
    """How a track turns a model and a task table into section-6 rows, and samples into
    training batches."""

    evaluate: Callable  # (model, task, df) -> rows
    batch_of: Callable  # list[Sample] -> batch
    lora: dict


def scorer(track: str, meta: dict, config, hp: dict) -> Scorer:
    trust = trusts_remote_code(meta)
    tok = load_tokenizer(meta["base"], trust)
    if track == "text":
        from clearbench.eval.text import evaluate_task

        return Scorer(
            lambda model, task, df: evaluate_task(model, tok, task, df, hp),
            lambda rows: collate(
                [encode(tok, s.question, s.answer, hp["max_len"]) for s in rows], tok.pad_token_id
            ),
            hp.get("lora"),
        )
    from clearbench.eval.vlm import evaluate_task
    from clearbench.train.vlm import VISION_TOWER

    vision = Vision(tok, load_image_processor(meta["base"], trust), config)
    # the relearning adapter leaves a frozen vision tower alone, as unlearning's does
    frozen = {"exclude_modules": VISION_TOWER} if hp.get("freeze_vision_tower", True) else {}
    return Scorer(
        lambda model, task, df: evaluate_task(model, vision, task, df, hp),
        lambda rows: vision.batch(rows, hp["max_len"]),
        (hp.get("lora") or {}) | frozen,
    )


def write_attack_table(df: pd.DataFrame, path, status: str = "ok") -> None:
    """Atomically, with the model's status in the metadata (as eval tables carry it)."""
    table = pa.Table.from_pandas(df, schema=ATTACK_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), STATUS_KEY: status})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def attack_model(model, name: str, setup: Setup, score: Scorer, hp: dict):
    """The attacked model and the tables to evaluate it on; (None, note) when it diverged."""
    if name == "probe":
        return model, setup.probes
    if m := QUANTIZED.fullmatch(name):
        quantize_(model, int(m.group(1)))
    elif name in RELEARN:
        samples = setup.relearn if name == "relearn_forget" else setup.retain
        if not samples:
            return None, "no samples to relearn on (relearn.forget_fraction 0 or no retain rows)"
        try:
            model, _ = relearn(model, samples, score.batch_of, hp, score.lora, name)
        except Diverged as err:
            return None, f"diverged: {err}"
    return model, setup.tasks


def run_attacks(model_dir: str, track: str, setup: Callable[[], Setup], out_path, hp: dict):
    """Evaluate every attack of `hp["attacks"]` on the model; write one table (see module doc).
    `setup` builds the samples (called only for a model whose status is ok)."""
    attacks = list(hp.get("attacks") or default_attacks(hp))
    check_hp(hp, attacks)
    status = read_model_json(model_dir).get("status", "ok")
    if status != "ok":  # a diverged unlearning run: an empty table, as its eval table is
        write_attack_table(pd.DataFrame(columns=ATTACK_SCHEMA.names), out_path, status)
        return {"status": status, "rows": 0}
    built = setup()
    tables, score = [], None
    summary = {"status": "ok", "relearn_slice": built.sliced, "attacks": {}, "notes": {}}
    for name in tqdm(attacks, desc=f"attack {Path(model_dir).name}", leave=False):
        start = time.perf_counter()
        torch.manual_seed(hp["seed"])
        model, meta = load_model(model_dir, compute=compute_hp(hp))  # every attack: a fresh copy
        score = score or scorer(track, meta, model.config, hp)
        model, todo = attack_model(model, name, built, score, hp)
        rows = 0
        if model is None:
            summary["notes"][name] = todo
        else:
            for task, df in todo.items():
                if len(df):
                    tables.append(score.evaluate(model, task, df).assign(attack=name))
                    rows += len(df)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        summary["attacks"][name] = {"rows": rows, "seconds": round(time.perf_counter() - start, 3)}
    empty = pd.DataFrame(columns=ATTACK_SCHEMA.names)
    table = pd.concat(tables, ignore_index=True) if tables else empty
    write_attack_table(table, out_path)
    return summary | {"rows": len(table)}


def attack_text(model_dir, forget_path, retain_path, out_path, hp: dict) -> dict:
    return run_attacks(model_dir, "text", lambda: text_setup(forget_path, retain_path, hp),
                       out_path, hp)  # fmt: skip


def attack_vlm(model_dir, clear_dir, text_dir, split: str, out_path, hp: dict) -> dict:
    return run_attacks(model_dir, "vlm", lambda: vlm_setup(clear_dir, text_dir, split, hp),
                       out_path, hp)  # fmt: skip


# ------------------------------------------------------------------------------- metrics


def metric_key(attack: str) -> str:
    """none -> forget_none, q4 -> forget_q4, relearn_forget (the Forget metric after relearning
    on forget) -> relearn_forget, relearn_retain -> relearn_retain_forget."""
    if attack == "relearn_forget":
        return attack
    return f"{attack}_forget" if attack in RELEARN else f"forget_{attack}"


def attack_scores(df: pd.DataFrame) -> dict:
    """The Forget metric (metrics/text.py's score_table, group `forget`) of each attack's rows;
    None where an attack has no rows. Keys: forget_none, forget_probe, forget_q<b>,
    relearn_forget, relearn_retain_forget."""
    if "attack" not in df.columns:
        raise TableError("missing column attack")
    keys = ("none", "probe", "q8", "q4", *RELEARN)
    scores = {metric_key(a): None for a in keys}
    for attack, rows in df.groupby("attack", sort=True):
        scores[metric_key(attack)] = score_table(rows[list(COLUMNS)].reset_index(drop=True))[
            "forget"
        ]
    return scores


def attack_metrics(table_path, out_path=None) -> dict:
    path = Path(table_path)
    df = read_table(path)  # metrics' own checks: columns, an empty table only for a non-ok model
    try:
        scores = attack_scores(df)
    except TableError as err:
        raise TableError(f"{path}: {err}") from None
    if out_path is not None:
        write_json_atomic(out_path, scores)
    return scores
