"""QA prompts, batching and per-sequence answer NLL: shared by training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clearbench.compute import to_device

PROMPT = "Question: {question}\nAnswer:"


def encode(tok, question: str, answer: str, max_len: int) -> tuple[list[int], list[int]]:
    """Prompt + ' answer' + eos; labels mask the prompt so only answer tokens are scored.

    Too long for max_len: the prompt loses its start, never the answer (an answer cut away
    would score as a silent zero loss).
    """
    prompt = tok(PROMPT.format(question=question), add_special_tokens=False).input_ids
    target = tok(" " + answer.strip(), add_special_tokens=False).input_ids + [tok.eos_token_id]
    target = target[: max_len - 1]
    prompt = (
        prompt[len(prompt) + len(target) - max_len :]
        if len(prompt) + len(target) > max_len
        else prompt
    )
    return prompt + target, [-100] * len(prompt) + target


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (B, T-1) of the labels and the mask of scored tokens.

    Every other key of the batch goes to the model (a VLM batch also has pixel_values)."""
    nll, scored, _, _ = token_nll_and_logits(model, batch)
    return nll, scored


def token_nll_and_logits(model, batch: dict[str, torch.Tensor]):
    """token_nll, plus the shifted logits (B, T-1, V) and labels (B, T-1) it came from (the
    evaluation's Min-K%++ scores reuse them)."""
    batch = to_device(batch, model)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    logits, labels = logits[:, :-1], batch["labels"][:, 1:]
    scored = labels != -100
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.clamp(min=0).reshape(-1),
        reduction="none",
    ).view(labels.shape)
    return nll * scored, scored, logits, labels


def sequence_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean answer-token NLL per sequence (B,)."""
    nll, scored = token_nll(model, batch)
    return nll.sum(1) / scored.sum(1).clamp(min=1)


@dataclass
class Answers:
    """A model's outputs at the answer positions of one batch (prompt and image tokens are never
    scored): the likelihoods and next-token distributions that training and unlearning use."""

    logits: torch.Tensor  # (N, V) float32: the N answer tokens of the whole batch
    targets: torch.Tensor  # (N,)
    rows: torch.Tensor  # (N,) the sequence each token belongs to
    counts: torch.Tensor  # (B,) answer tokens per sequence (at least 1)
    hidden_states: tuple | None = None  # per layer (B, T, H), when asked for

    def per_sequence(self, values: torch.Tensor) -> torch.Tensor:
        """Sum token values (N,) per sequence (B,)."""
        out = torch.zeros(len(self.counts), dtype=values.dtype, device=values.device)
        return out.index_add(0, self.rows, values)

    def logp(self) -> torch.Tensor:
        """Sequence log-likelihood log p(y|x) (B,): the sum over the answer's tokens."""
        return -self.per_sequence(F.cross_entropy(self.logits, self.targets, reduction="none"))

    def nll(self) -> torch.Tensor:
        """Mean answer-token NLL per sequence (B,)."""
        return -self.logp() / self.counts


def answer_outputs(model, batch: dict, hidden_states: bool = False) -> Answers:
    """The model's `Answers` on a batch. The LM head and the softmax run on the answer positions
    only: prompt and image tokens are most of a sequence, and a tiny model's head costs as much
    as its layers. Works for a causal LM and a LLaVA, bare or wrapped by peft."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    batch = to_device(batch, core)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = core.model(**inputs, output_hidden_states=hidden_states)
    labels = batch["labels"][:, 1:]
    scored = labels != -100
    logits = core.lm_head(out.last_hidden_state[:, :-1][scored]).float()
    return Answers(
        logits=logits,
        targets=labels[scored],
        rows=scored.nonzero()[:, 0],
        counts=scored.sum(1).clamp(min=1),
        hidden_states=out.hidden_states if hidden_states else None,
    )


def batches(rows: list, batch_size: int, generator: torch.Generator | None = None):
    """Index batches over rows, shuffled by `generator` when given."""
    order = torch.randperm(len(rows), generator=generator) if generator is not None else None
    idx = order.tolist() if order is not None else list(range(len(rows)))
    for start in range(0, len(idx), batch_size):
        yield [rows[i] for i in idx[start : start + batch_size]]
