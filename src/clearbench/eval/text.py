"""Per-sample evaluation of a language model: the table every metric is computed from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from clearbench.compute import compute_hp, to_device
from clearbench.data.text import read_qa
from clearbench.io import atomic_path
from clearbench.metrics import STATUS_KEY
from clearbench.models.factory import (
    load_model,
    load_tokenizer,
    read_model_json,
    trusts_remote_code,
)
from clearbench.train.qa import PROMPT, collate, encode, sequence_nll

EVAL_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("sample_id", pa.string()),
        ("gt_loss", pa.float64()),
        ("para_loss", pa.float64()),
        ("perturbed_losses", pa.list_(pa.float64())),
        ("generation", pa.string()),
        ("answer", pa.string()),
    ]
)


def pick_samples(df: pd.DataFrame, max_samples: int, seed: int) -> pd.DataFrame:
    """A seeded subset (all rows when max_samples <= 0), in a stable order."""
    df = df.sort_values("sample_id").reset_index(drop=True)
    if 0 < max_samples < len(df):
        keep = np.random.default_rng(seed).choice(len(df), size=max_samples, replace=False)
        df = df.iloc[np.sort(keep)].reset_index(drop=True)
    return df


def losses_by_length(encoded: list, batch_size: int, score) -> np.ndarray:
    """One loss per encoded sample; `score(indices)` scores a batch of samples of similar
    length (sorting by length keeps padding, and so time, low)."""
    out = np.empty(len(encoded))
    for idx in by_length([len(ids) for ids, _ in encoded], batch_size):
        out[idx] = score(idx).float().cpu().numpy()
    return out


def by_length(lengths: list[int], batch_size: int):
    """Index batches of samples of similar length (padding, and so time, stays low)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def greedy_decode(model, tok, batch, max_new_tokens: int) -> list[str]:
    """Greedy continuations of a left-padded prompt batch (KV cache on, on the model's device),
    without the prompts."""
    out = model.generate(
        **to_device(batch, model),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]


@torch.no_grad()
def answer_losses(model, tok, pairs: list[tuple[str, str]], max_len: int, batch_size: int):
    """Mean answer-token NLL for each (question, answer)."""
    encoded = [encode(tok, q, a, max_len) for q, a in pairs]
    return losses_by_length(
        encoded,
        batch_size,
        lambda idx: sequence_nll(model, collate([encoded[i] for i in idx], tok.pad_token_id)),
    )


@torch.no_grad()
def greedy_answers(model, tok, questions: list[str], max_new_tokens: int, batch_size: int):
    prompts = [PROMPT.format(question=q) for q in questions]
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False).input_ids]
    answers = [""] * len(prompts)
    tok.padding_side = "left"
    for idx in by_length(lengths, batch_size):
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=False)  # fmt: skip
        for i, answer in zip(idx, greedy_decode(model, tok, enc, max_new_tokens), strict=True):
            answers[i] = answer
    tok.padding_side = "right"
    return answers


def contract_rows(task: str, df: pd.DataFrame, losses, generations: list[str]) -> pd.DataFrame:
    """The per-sample contract rows; `losses` yields gt, [paraphrase,] perturbed... per sample."""
    rows = []
    for row, generation in zip(df.itertuples(), generations, strict=True):
        gt = next(losses)
        para = next(losses) if row.paraphrased_answer else None
        rows.append(
            {
                "task": task,
                "sample_id": row.sample_id,
                "gt_loss": gt,
                "para_loss": para,
                "perturbed_losses": [next(losses) for _ in row.perturbed_answers],
                "generation": generation,
                "answer": row.answer,
            }
        )
    return pd.DataFrame(rows)


def evaluate_task(model, tok, task: str, df: pd.DataFrame, hp: dict) -> pd.DataFrame:
    """One row per sample: gt, paraphrase and perturbed losses plus the greedy generation."""
    pairs = []
    for row in df.itertuples():
        options = [row.answer] + ([row.paraphrased_answer] if row.paraphrased_answer else [])
        pairs += [(row.question, o) for o in options + list(row.perturbed_answers)]
    losses = iter(answer_losses(model, tok, pairs, hp["max_len"], hp["batch_size"]).tolist())
    generations = greedy_answers(
        model, tok, list(df["question"]), hp["max_new_tokens"], hp["batch_size"]
    )
    return contract_rows(task, df, losses, generations)


def write_table(df: pd.DataFrame, path: str | Path, status: str = "ok") -> None:
    """Atomically; the model's status goes into the file's metadata (STATUS_KEY), so that
    `metrics` tells a diverged model's empty table from a broken one."""
    table = pa.Table.from_pandas(df, schema=EVAL_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, STATUS_KEY: status})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def unevaluated(model_dir: str, out_path: str) -> dict | None:
    """A model whose run did not end ok (diverged) gets an empty table, never garbage: its
    summary, or None for a model to evaluate."""
    status = read_model_json(model_dir).get("status", "ok")
    if status == "ok":
        return None
    write_table(pd.DataFrame(columns=EVAL_SCHEMA.names), out_path, status=status)
    return {"status": status, "rows": 0}


def write_tasks(tables: list[pd.DataFrame], out_path: str) -> dict:
    table = pd.concat(tables, ignore_index=True)
    write_table(table, out_path)
    return {"status": "ok", "rows": len(table)}


def evaluate(model_dir: str, tasks: dict[str, str], out_path: str, hp: dict) -> dict:
    """Evaluate one model on every task (a diverged one: see `unevaluated`)."""
    if (skipped := unevaluated(model_dir, out_path)) is not None:
        return skipped
    torch.manual_seed(hp["seed"])
    model, meta = load_model(model_dir, compute=compute_hp(hp))
    tok = load_tokenizer(meta["base"], trusts_remote_code(meta))
    tables = []
    for task, path in tqdm(tasks.items(), desc=f"eval {Path(model_dir).name}", leave=False):
        df = pick_samples(read_qa(path), hp["max_samples"], hp["seed"])
        tables.append(evaluate_task(model, tok, task, df, hp))
    return write_tasks(tables, out_path)
