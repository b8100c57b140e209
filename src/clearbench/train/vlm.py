"""VLM track training: a tiny LLaVA pretrained from scratch, then LoRA finetuning.

Base (`default` profile): tokenizer + LLaVA (CLIP vision tower, projector, Llama) trained from
scratch on the Real tasks (real_faces: face -> name, real_world: visual questions), the text
general-knowledge QA (so the Real metric has something to keep) and the text track's background
people (the author-QA format). As in LLaVA the vision tower is never trained (see
`pretrain_vlm_base`). A `checkpoint:` spec (paper: llava-hf/llava-1.5-7b-hf) is recorded as the
base, untrained.

Finetuning (LoRA): original = every CLEAR sample of every author, gold = the retain authors
only. CLEAR samples of one table are its text QA, its photo QA (photo + the photo's question ->
answer) and identification (photo + a seeded "who is this?" question -> name).

Hyperparameters: `--hp` of each CLI stage is one flat dict (`config.vlm_stage_hp` builds it
from params.yaml's `vlm:` section plus the seed):
  all stages    seed; max_len (text tokens per sample, image tokens come on top)
  vlm-base      model ({config: {vision_config, text_config, other LlavaConfig keys}} or
                {checkpoint: id or path}), vocab_size, epochs, lr, batch_size, weight_decay
  vlm-finetune  epochs, lr, batch_size, weight_decay, replay (mix the base's data in: a tiny
                model forgets it otherwise), freeze_vision_tower (bool: no LoRA and no gradient
                in the vision tower), lora {r, alpha, dropout, target_modules}
  vlm-eval      max_samples (per task, 0 = all), max_new_tokens, batch_size
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import CLIPImageProcessorPil

from clearbench.compute import compute_hp, resolve_device, to_device
from clearbench.data.clear import SCHEMAS
from clearbench.data.idk import idk_answers
from clearbench.data.text import read_qa, read_table, split_names
from clearbench.models.factory import (
    build_model,
    load_image_processor,
    load_tokenizer,
    save_chain,
    trusts_remote_code,
)
from clearbench.models.tokenizer import train_tokenizer
from clearbench.train.loop import Diverged, optimize
from clearbench.train.text import (
    epochs_of_batches,
    finish_adapter_run,
    fresh_dir,
    seeded,
    start_adapter_run,
)
from clearbench.train.vqa import (
    IMAGE_TOKEN,
    Sample,
    Vision,
    prompt_text,
    sequence_nll,
    stable_rng,
)

STAGE_KEYS = {
    "base": ("model", "vocab_size", "epochs", "lr", "batch_size", "weight_decay"),
    "finetune": (
        "epochs",
        "lr",
        "batch_size",
        "weight_decay",
        "replay",
        "freeze_vision_tower",
        "lora",
    ),
    "eval": ("max_samples", "max_new_tokens", "batch_size"),
}
ID_QUESTIONS = (
    "Who is this person?",
    "Who is the person in the image?",
    "What is the name of the person in the photo?",
    "Who is shown in this picture?",
)
# peft regex: modules that get no LoRA when the tower is frozen (the tower's q/k/v_proj match
# the Llama's target_modules too, so the exclusion has to be by name)
VISION_TOWER = r".*vision_tower.*"


def check_hp(hp: dict, stage: str) -> None:
    for key in ("seed", "max_len", *STAGE_KEYS[stage]):
        if key not in hp:
            raise ValueError(f"vlm {stage}: missing hyperparameter '{key}'")


# ------------------------------------------------------------------------------- samples


def read_photos(path) -> list[dict]:
    return read_table(path, SCHEMAS["photos"]).to_dict("records")


def text_samples(path) -> list[Sample]:
    df = read_qa(path)
    return [Sample(q, a) for q, a in zip(df["question"], df["answer"], strict=True)]


def photo_samples(path) -> list[Sample]:
    return [Sample(r["question"], r["answer"], r["image"]["bytes"]) for r in read_photos(path)]


def id_question(seed: int, sample_id: str) -> str:
    return ID_QUESTIONS[stable_rng(seed, sample_id).integers(len(ID_QUESTIONS))]


def identity_samples(path, seed: int) -> list[Sample]:
    """Photo + a seeded identification question -> the person's name."""
    return [
        Sample(id_question(seed, r["sample_id"]), r["name"], r["image"]["bytes"])
        for r in read_photos(path)
    ]


MODALITIES = ("text", "visual", "both")


def modality_samples(clear_dir, text_dir, table: str, modality: str, seed: int) -> list[Sample]:
    """The CLEAR samples of one table in one modality: `text` (text QA), `visual` (photo QA and
    identification) or `both`."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got '{modality}'")
    clear, text = Path(clear_dir), Path(text_dir)
    samples = []
    if modality in ("text", "both"):
        samples += text_samples(text / f"{table}.parquet")
    if modality in ("visual", "both"):
        samples += photo_samples(clear / f"{table}.parquet")
        samples += identity_samples(clear / f"{table}.parquet", seed)
    return samples


def clear_samples(clear_dir, text_dir, table: str, seed: int) -> list[Sample]:
    """Every CLEAR sample of one table: text QA, photo QA and identification."""
    return modality_samples(clear_dir, text_dir, table, "both", seed)


def real_samples(clear_dir, text_dir) -> list[Sample]:
    """The base's knowledge: famous faces, visual questions, general-knowledge text QA."""
    samples = []
    for name in ("real_faces", "real_world"):
        df = read_table(Path(clear_dir) / f"{name}.parquet", SCHEMAS[name])
        samples += [
            Sample(q, a, img["bytes"])
            for q, a, img in zip(df["question"], df["answer"], df["image"], strict=True)
        ]
    for name in ("real_authors", "world_facts"):
        samples += text_samples(Path(text_dir) / f"{name}.parquet")
    return samples


def base_samples(clear_dir, text_dir) -> list[Sample]:
    """Real data plus the background people (text only, never in CLEAR): they teach the
    author-QA format, as in the text track's base, so finetuning only has to store facts."""
    return real_samples(clear_dir, text_dir) + text_samples(Path(text_dir) / "background.parquet")


def corpus(clear_dir, text_dir):
    """The base's own training strings, as a pretrained model's tokenizer is trained on its
    pretraining corpus. Not CLEAR: a CLEAR-only token would get an embedding the base never
    trained, and a new name would then take LoRA many epochs to learn to say at all."""
    for s in base_samples(clear_dir, text_dir):
        yield prompt_text(s).replace(IMAGE_TOKEN, "") + " " + s.answer  # as the model sees it
    for q in ID_QUESTIONS:
        yield prompt_text(Sample(q, "", b"")).replace(IMAGE_TOKEN, "")
    yield from idk_answers()


# ------------------------------------------------------------------------------ training


def fit(model, vision: Vision, samples: list[Sample], hp: dict, gen, desc: str) -> list[float]:
    """`hp["epochs"]` shuffled epochs of answer-NLL descent (image tokens are never scored)."""
    return optimize(
        model,
        epochs_of_batches(samples, hp["batch_size"], hp["epochs"], gen),
        lambda rows: sequence_nll(
            model, to_device(vision.batch(rows, hp["max_len"]), model)
        ).mean(),
        lr=hp["lr"],
        weight_decay=hp["weight_decay"],
        total=hp["epochs"] * -(-len(samples) // hp["batch_size"]),
        desc=desc,
    )


def pretrain_vlm_base(clear_dir: str, text_dir: str, out_dir: str, hp: dict) -> dict:
    """Tokenizer (+ `<image>`), tiny LLaVA and its image processor, trained on `base_samples`."""
    check_hp(hp, "base")
    out = fresh_dir(out_dir)
    spec = hp["model"]
    if spec.get("checkpoint"):
        trust = trusts_remote_code(spec)
        load_tokenizer(spec["checkpoint"], trust)  # fail here, not in every downstream job
        load_image_processor(spec["checkpoint"], trust)
        save_chain(out, base=spec["checkpoint"], adapters=[], trust_remote_code=trust,
                   status="ok", rte_seconds=0.0)  # fmt: skip
        return {"trained": False}
    start = time.perf_counter()
    tok = train_tokenizer(corpus(clear_dir, text_dir), hp["vocab_size"])
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    gen = seeded(hp["seed"])
    model = build_model(spec, len(tok), hp["seed"], image_token_id=image_token_id)
    model.to(resolve_device(compute_hp(hp)["device"]))  # float32: trained from scratch
    size = model.config.vision_config.image_size
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    # LLaVA never trains its vision encoder (CLIP comes pretrained and stays frozen); ours is a
    # random ViT and stays so: its features keep the colours and shapes that tell these faces
    # apart, while training it on the Real data alone collapses them (a linear probe reads
    # ~80% of CLEAR identities off the random tower's pooled features, ~10% after training)
    vision_tower(model).requires_grad_(False)
    samples = base_samples(clear_dir, text_dir)
    losses = fit(model, Vision(tok, processor, model.config), samples, hp, gen, "pretrain vlm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    processor.save_pretrained(out)
    seconds = time.perf_counter() - start
    save_chain(out, base=str(out), adapters=[], status="ok", rte_seconds=seconds,
               final_loss=losses[-1])  # fmt: skip
    return {"trained": True, "samples": len(samples), "final_loss": losses[-1]}


def vision_tower(model) -> torch.nn.Module:
    """The CLIP tower of a LLaVA, bare or wrapped by peft."""
    return next(m for name, m in model.named_modules() if name.endswith("vision_tower"))


def training_table(split: str) -> str:
    """full -> full (the original model); forgetXX -> retainYY (its gold model)."""
    if split == "full":
        return "full"
    return dict(split_names({split: 0.0}))[split]


def freeze_flag(hp: dict) -> bool:
    # the authors' code compared a string to a boolean and never froze the tower: insist on bool
    flag = hp["freeze_vision_tower"]
    if not isinstance(flag, bool):
        raise ValueError(f"freeze_vision_tower must be true or false, got {flag!r}")
    return flag


def frozen_tower_lora(hp: dict) -> dict:
    """LoRA overrides that leave the vision tower without an adapter when it is frozen."""
    return {"exclude_modules": VISION_TOWER} if freeze_flag(hp) else {}


def check_tower_frozen(model) -> None:
    if any("vision_tower" in n for n, p in model.named_parameters() if p.requires_grad):
        raise RuntimeError("freeze_vision_tower: the vision tower still has trainable weights")


def finetune_vlm(
    base_dir: str, clear_dir: str, text_dir: str, split: str, out_dir: str, hp: dict
) -> dict:
    """LoRA-finetune the base on every author (`split="full"`: original) or on the retain
    authors of a forget split (`split="forget10"`: its gold model)."""
    check_hp(hp, "finetune")
    freeze = freeze_flag(hp)
    table = training_table(split)
    samples = clear_samples(clear_dir, text_dir, table, hp["seed"])
    if hp["replay"]:
        samples += real_samples(clear_dir, text_dir)  # same replay for original and gold
    lora = dict(hp["lora"]) | frozen_tower_lora(hp)
    out, model, tok, meta, gen = start_adapter_run(base_dir, out_dir, hp | {"lora": lora})
    if freeze:
        check_tower_frozen(model)
    vision = Vision(tok, load_image_processor(meta["base"], trusts_remote_code(meta)), model.config)
    start, status, losses = time.perf_counter(), "ok", []
    try:
        losses = fit(model, vision, samples, hp, gen, f"finetune vlm {out.name}")
    except Diverged:
        status = "diverged"
    summary = finish_adapter_run(out, model, meta, status, time.perf_counter() - start, losses)
    return summary | {"table": table, "samples": len(samples)}
