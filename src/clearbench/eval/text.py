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
from clearbench.train.qa import PROMPT, Answers, collate, encode, token_nll_and_logits

EVAL_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("sample_id", pa.string()),
        ("gt_loss", pa.float64()),
        ("para_loss", pa.float64()),
        ("perturbed_losses", pa.list_(pa.float64())),
        ("generation", pa.string()),
        ("answer", pa.string()),
        # Min-K%++ score of each ground-truth answer token (the tokens gt_loss averages), for the
        # membership attack in metrics.text; appended so that older readers keep their columns
        ("gt_minkpp", pa.list_(pa.float64())),
    ]
)


def pick_samples(df: pd.DataFrame, max_samples: int, seed: int) -> pd.DataFrame:
    """A seeded subset (all rows when max_samples <= 0), in a stable order."""
    df = df.sort_values("sample_id").reset_index(drop=True)
    if 0 < max_samples < len(df):
        keep = np.random.default_rng(seed).choice(len(df), size=max_samples, replace=False)
        df = df.iloc[np.sort(keep)].reset_index(drop=True)
    return df


def scores_by_length(encoded: list, batch_size: int, score) -> tuple[np.ndarray, list]:
    """One loss and one Min-K%++ list (or None) per encoded sample; `score(indices)` scores a
    batch of samples of similar length: (losses (B,), B lists or Nones)."""
    losses, minkpp = np.empty(len(encoded)), [None] * len(encoded)
    for idx in by_length([len(ids) for ids, _ in encoded], batch_size):
        batch_losses, batch_minkpp = score(idx)
        losses[idx] = batch_losses.float().cpu().numpy()
        for i, values in zip(idx, batch_minkpp, strict=True):
            minkpp[i] = values
    return losses, minkpp


def minkpp_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Min-K%++ score of each target token (Zhang et al. 2024), logits (N, V) -> (N,) float64:
    (log p(x_t) - mu_t) / sigma_t, mu_t and sigma_t^2 the mean and variance of log p(z) for
    z ~ p(.|x_<t) over the vocabulary."""
    logp = torch.log_softmax(logits.float(), -1)
    p = logp.exp()
    # p == 0 (a -inf logit) adds nothing; 0 * -inf would be NaN
    mu = torch.where(p > 0, p * logp, 0.0).sum(-1)
    # the centred form: E[logp^2] - mu^2 cancels badly in float32
    var = torch.where(p > 0, p * (logp - mu[:, None]) ** 2, 0.0).sum(-1)
    target = logp.gather(-1, targets[:, None])[:, 0]
    # a flat distribution has sigma 0 and target == mu: score 0, not NaN
    return (target - mu).double() / var.double().sqrt().clamp(min=1e-12)


def minkpp_per_row(answers: Answers, want: list[bool]) -> list:
    """Per batch row: the Min-K%++ scores of its answer tokens where `want`, else None."""
    want_t = torch.tensor(want, device=answers.rows.device)
    if not want_t.any():
        return [None] * len(want)
    keep = want_t[answers.rows]
    scores = minkpp_scores(answers.logits[keep], answers.targets[keep]).cpu()
    counts = torch.bincount(answers.rows[keep].cpu(), minlength=len(want)).tolist()
    per_row = torch.split(scores, counts)
    return [s.tolist() if w else None for s, w in zip(per_row, want, strict=True)]


def nll_and_minkpp(model, batch: dict, want: list[bool]) -> tuple[torch.Tensor, list]:
    """Mean answer-token NLL per sequence (B,), the same ops (so the same numbers) as
    qa.sequence_nll, plus the Min-K%++ token scores of the rows in `want` from the same logits."""
    nll, scored, logits, labels = token_nll_and_logits(model, batch)
    losses = nll.sum(1) / scored.sum(1).clamp(min=1)
    if not any(want):
        return losses, [None] * len(want)
    keep = scored & torch.tensor(want, device=scored.device)[:, None]  # only wanted rows' logits
    tokens = Answers(logits[keep], labels[keep], keep.nonzero()[:, 0], keep.sum(1).clamp(min=1))
    return losses, minkpp_per_row(tokens, want)


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
def answer_scores(
    model, tok, pairs: list[tuple[str, str]], max_len: int, batch_size: int, minkpp_for=()
) -> tuple[np.ndarray, list]:
    """Mean answer-token NLL for each (question, answer), and the Min-K%++ token scores of the
    pairs whose index is in `minkpp_for` (None for the others)."""
    encoded = [encode(tok, q, a, max_len) for q, a in pairs]
    minkpp_for = set(minkpp_for)
    return scores_by_length(
        encoded,
        batch_size,
        lambda idx: nll_and_minkpp(
            model,
            collate([encoded[i] for i in idx], tok.pad_token_id),
            [i in minkpp_for for i in idx],
        ),
    )


def answer_losses(model, tok, pairs: list[tuple[str, str]], max_len: int, batch_size: int):
    """Mean answer-token NLL for each (question, answer)."""
    return answer_scores(model, tok, pairs, max_len, batch_size)[0]


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


def option_pairs(df: pd.DataFrame) -> tuple[list, list[int]]:
    """(row, option) for the answer, [the paraphrase,] the perturbed answers of each row, in
    that order, and the index of each row's ground-truth pair."""
    pairs, gt_index = [], []
    for row in df.itertuples():
        options = [row.answer] + ([row.paraphrased_answer] if row.paraphrased_answer else [])
        gt_index.append(len(pairs))
        pairs += [(row, o) for o in options + list(row.perturbed_answers)]
    return pairs, gt_index


def contract_rows(
    task: str, df: pd.DataFrame, losses, generations: list[str], gt_minkpp: list
) -> pd.DataFrame:
    """The per-sample contract rows; `losses` yields gt, [paraphrase,] perturbed... per sample,
    `gt_minkpp` is one list of token scores per sample."""
    rows = []
    for row, generation, minkpp in zip(df.itertuples(), generations, gt_minkpp, strict=True):
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
                "gt_minkpp": minkpp,
            }
        )
    return pd.DataFrame(rows)


def evaluate_task(model, tok, task: str, df: pd.DataFrame, hp: dict) -> pd.DataFrame:
    """One row per sample: gt, paraphrase and perturbed losses, the gt answer's Min-K%++ token
    scores (same forward pass), and the greedy generation."""
    options, gt_index = option_pairs(df)
    pairs = [(row.question, option) for row, option in options]
    losses, minkpp = answer_scores(model, tok, pairs, hp["max_len"], hp["batch_size"], gt_index)
    generations = greedy_answers(
        model, tok, list(df["question"]), hp["max_new_tokens"], hp["batch_size"]
    )
    return contract_rows(
        task, df, iter(losses.tolist()), generations, [minkpp[i] for i in gt_index]
    )


def write_table(df: pd.DataFrame, path: str | Path, status: str = "ok") -> None:
    """Atomically; the model's status goes into the file's metadata (STATUS_KEY), so that
    `metrics` tells a diverged model's empty table from a broken one. Rows without gt_minkpp
    (built before it existed) get it null."""
    if "gt_minkpp" not in df:
        df = df.assign(gt_minkpp=None)
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
