"""Text track training: base pretraining, then LoRA finetuning of the original and gold models."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from clearbench.compute import compute_hp, resolve_device, to_device
from clearbench.data.idk import idk_answers
from clearbench.data.text import read_qa
from clearbench.models.factory import (
    ADAPTER_DIR,
    build_model,
    load_model,
    load_tokenizer,
    save_chain,
    trusts_remote_code,
)
from clearbench.models.tokenizer import train_tokenizer
from clearbench.train.loop import Diverged, optimize
from clearbench.train.qa import batches, collate, encode, sequence_nll


def qa_rows(path: str | Path) -> list[tuple[str, str]]:
    df = read_qa(path)
    return list(zip(df["question"], df["answer"], strict=True))


def corpus(paths: list[str | Path]):
    """Every string a tokenizer must cover: questions, answers, paraphrases, wrong options of
    the tables given (the base's own corpus: never the CLEAR authors, see `text_base`)."""
    for path in paths:
        df = read_qa(path)
        for q, a, para, perts in zip(
            df["question"],
            df["answer"],
            df["paraphrased_answer"],
            df["perturbed_answers"],
            strict=True,
        ):
            yield f"Question: {q}\nAnswer: {a}"
            if para:
                yield para
            yield from perts
    yield from idk_answers()  # what IDK tuning teaches to say


def seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def epochs_of_batches(rows, batch_size: int, epochs: int, gen: torch.Generator):
    for _ in range(epochs):
        yield from batches(rows, batch_size, gen)


def fit_nll(model, tok, rows, hp: dict, gen: torch.Generator, desc: str) -> list[float]:
    """`hp["epochs"]` shuffled epochs of answer-NLL descent over (question, answer) rows."""
    return optimize(
        model,
        epochs_of_batches(rows, hp["batch_size"], hp["epochs"], gen),
        nll_step(model, tok, hp["max_len"]),
        lr=hp["lr"],
        weight_decay=hp["weight_decay"],
        total=hp["epochs"] * -(-len(rows) // hp["batch_size"]),
        desc=desc,
    )


def fresh_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def nll_step(model, tok, max_len: int):
    def step_loss(rows):
        batch = collate([encode(tok, q, a, max_len) for q, a in rows], tok.pad_token_id)
        return sequence_nll(model, to_device(batch, model)).mean()

    return step_loss


def pretrain_base(qa_paths: list[str], out_dir: str, hp: dict) -> dict:
    """Default profile: tokenizer + tiny Llama trained from scratch on general-knowledge QA.

    The tokenizer is trained on the same tables, as a pretrained model's tokenizer is trained
    on its pretraining corpus: a token found only in the CLEAR authors' text would keep a
    random embedding in the gold model, which never sees the forget authors.

    With a checkpoint in `hp["model"]`, the base *is* that checkpoint: nothing is trained.
    """
    out = fresh_dir(out_dir)
    spec = hp["model"]
    if spec.get("checkpoint"):
        trust = trusts_remote_code(spec)
        load_tokenizer(spec["checkpoint"], trust)  # fail here, not in every downstream job
        save_chain(out, base=spec["checkpoint"], adapters=[], trust_remote_code=trust,
                   status="ok", rte_seconds=0.0)  # fmt: skip
        return {"trained": False}
    start = time.perf_counter()
    tok = train_tokenizer(corpus(qa_paths), hp["vocab_size"])
    gen = seeded(hp["seed"])
    # trained from scratch in float32 (full training needs float32 weights), on the device
    model = build_model(spec, vocab_size=len(tok), seed=hp["seed"])
    model.to(resolve_device(compute_hp(hp)["device"]))
    rows = [r for p in qa_paths for r in qa_rows(p)]
    losses = fit_nll(model, tok, rows, hp, gen, "pretrain base")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    save_chain(
        out,
        base=str(out),
        adapters=[],
        status="ok",
        rte_seconds=time.perf_counter() - start,
        final_loss=losses[-1],
    )
    return {"trained": True, "final_loss": losses[-1]}


def add_lora(model, lora: dict):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        exclude_modules=lora.get("exclude_modules"),  # a VLM's frozen vision tower
        bias="none",
    )
    return get_peft_model(model, config)


def save_adapter(peft_model, out: Path) -> str:
    adapter = out / ADAPTER_DIR
    peft_model.save_pretrained(adapter)
    return str(adapter)


def finetune(base_dir: str, data_path: str, out_dir: str, hp: dict, replay: list[str] = ()) -> dict:
    """LoRA-finetune the base on one QA table (all authors: original; retain only: gold).

    `replay` tables (the base's general knowledge) are mixed in so that a tiny model trained
    at a high learning rate keeps what the Real metric measures; original and gold get the
    same replay, so forget quality compares like with like.
    """
    out, model, tok, meta, gen = start_adapter_run(base_dir, out_dir, hp)
    rows = qa_rows(data_path) + [r for p in replay for r in qa_rows(p)]
    start, status, losses = time.perf_counter(), "ok", []
    try:
        losses = fit_nll(model, tok, rows, hp, gen, f"finetune {out.name}")
    except Diverged:
        status = "diverged"
    return finish_adapter_run(out, model, meta, status, time.perf_counter() - start, losses)


def start_adapter_run(source_dir: str, out_dir: str, hp: dict):
    """A fresh output folder, the source model with its chain merged (on the job's device, in
    its dtype), its tokenizer, a seeded generator and a new LoRA adapter to train: how
    finetuning and unlearning both begin."""
    out = fresh_dir(out_dir)
    compute = compute_hp(hp)
    model, meta = load_model(source_dir, compute=compute)
    tok = load_tokenizer(meta["base"], trusts_remote_code(meta))
    gen = seeded(hp["seed"])
    return out, add_lora(prepare_for_training(model, compute), hp["lora"]), tok, meta, gen


def prepare_for_training(model, compute: dict):
    """Gradient checkpointing and k-bit preparation, as `compute` asks. The adapters peft adds
    next stay float32 on a bfloat16/float16 base (peft's autocast_adapter_dtype)."""
    if compute["quantize"] != "none":
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=compute["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if compute["gradient_checkpointing"]:
        # non-reentrant: the frozen base's inputs need no requires_grad for LoRA to get gradients
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2's name
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False
    return model


def finish_adapter_run(out: Path, model, meta: dict, status: str, seconds: float, losses) -> dict:
    """Save the adapter and the chain; a diverged run keeps no adapter (NaN weights are never
    evaluated) and records its status instead."""
    adapters = list(meta["adapters"])
    if status == "ok":
        adapters.append(save_adapter(model, out))
    final = losses[-1] if losses else None
    save_chain(out, base=meta["base"], adapters=adapters, status=status, rte_seconds=seconds,
               final_loss=final, trust_remote_code=trusts_remote_code(meta))  # fmt: skip
    return {"status": status, "final_loss": final}
