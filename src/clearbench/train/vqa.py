"""Visual QA samples for LLaVA-style models: prompts with the image placeholder, answer-only
labels, pixels, batches. Shared by VLM training and evaluation (the VLM twin of train/qa.py).

A prompt is LLaVA-1.5's template, "USER: <image>\\n{question} ASSISTANT:", tokenized as the
model's own processor would: the tokenizer keeps `<image>` as one special token, which is then
repeated once per image feature (LlavaProcessor does the same). Image tokens and the prompt are
labelled -100, so only answer tokens are ever scored.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from clearbench.train.qa import answer_outputs, collate

IMAGE_TOKEN = "<image>"
PROMPT = "USER: {image}{question} ASSISTANT:"


@dataclass(frozen=True)
class Sample:
    question: str
    answer: str
    image: bytes | None = None  # PNG bytes; None for a text-only question


def stable_rng(seed: int, key: str) -> np.random.Generator:
    """A generator per (seed, sample): the same draw whatever else is drawn, in any order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def prompt_text(sample: Sample) -> str:
    image = f"{IMAGE_TOKEN}\n" if sample.image is not None else ""
    return PROMPT.format(image=image, question=sample.question)


class Vision:
    """What encoding needs from a VLM: its tokenizer, `<image>` id, feature count and pixels.

    Pixels are cached per image: every epoch and every answer option reuses them.
    """

    def __init__(self, tok, image_processor, config):
        self.tok, self.processor = tok, image_processor
        self.image_token_id = config.image_token_id
        self.n_image_tokens = config.image_seq_length
        self._pixels: dict[bytes, torch.Tensor] = {}
        if tok.convert_tokens_to_ids(IMAGE_TOKEN) != self.image_token_id:
            raise ValueError(f"the tokenizer's {IMAGE_TOKEN} id is not the model's image_token_id")

    def pixels(self, png: bytes) -> torch.Tensor:
        if png not in self._pixels:
            img = Image.open(io.BytesIO(png)).convert("RGB")
            out = self.processor(images=[img], return_tensors="pt")["pixel_values"][0]
            self._pixels[png] = out
        return self._pixels[png]

    def prompt_ids(self, sample: Sample) -> list[int]:
        """The prompt's ids with the one `<image>` token expanded to n_image_tokens."""
        ids = self.tok(prompt_text(sample)).input_ids  # the tokenizer's own BOS rule
        out = []
        for i in ids:
            out += [i] * self.n_image_tokens if i == self.image_token_id else [i]
        return out

    def encode(self, sample: Sample, max_len: int) -> tuple[list[int], list[int]]:
        """Prompt + ' answer' + eos with answer-only labels; max_len counts text tokens.

        Too long: the question loses its start (after the image), never the answer or image.
        """
        prompt = self.prompt_ids(sample)
        answer = " " + sample.answer.strip()
        target = self.tok(answer, add_special_tokens=False).input_ids + [self.tok.eos_token_id]
        target = target[: max_len - 1]
        n_img = self.n_image_tokens if sample.image is not None else 0
        excess = len(prompt) - n_img + len(target) - max_len
        if excess > 0:
            keep = prompt.index(self.image_token_id) + n_img if n_img else 0
            prompt = prompt[:keep] + prompt[keep + excess :]
        return prompt + target, [-100] * len(prompt) + target

    def batch(self, samples: list[Sample], max_len: int) -> dict:
        return self.collate(samples, [self.encode(s, max_len) for s in samples])

    def collate(self, samples: list[Sample], encoded: list[tuple[list[int], list[int]]]) -> dict:
        """Right-padded batch; pixel_values holds the images of the samples that have one, in
        order (LLaVA fills the batch's image tokens from it, image after image)."""
        return self.with_pixels(collate(encoded, self.tok.pad_token_id), samples)

    def with_pixels(self, batch: dict, samples: list[Sample]) -> dict:
        images = [self.pixels(s.image) for s in samples if s.image is not None]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch

    def prompt_batch(self, samples: list[Sample]) -> dict:
        """Left-padded prompts for generation (new tokens are appended on the right)."""
        prompts = [self.prompt_ids(s) for s in samples]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        return self.with_pixels({"input_ids": ids, "attention_mask": mask}, samples)


def sequence_nll(model, batch: dict) -> torch.Tensor:
    """Mean answer-token NLL per sequence (B,): the same number as qa.sequence_nll, with the LM
    head on the answer positions only (see qa.answer_outputs)."""
    return answer_outputs(model, batch).nll()
