"""What an unlearning method of the clip track is given (`clip.methods.unlearn_clip`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clearbench.clip import model as cm
from clearbench.clip.data import ClipData


@dataclass
class ClipTask:
    text_inputs: dict  # input_ids, attention_mask of every identity's prompt (C rows, by label)
    target: list[int]  # identity labels to forget
    forget_pixels: torch.Tensor  # (n, 3, S, S) the target identities' train photos (real)
    forget_labels: torch.Tensor
    retain_pixels: torch.Tensor  # the other identities' train photos
    retain_labels: torch.Tensor
    image_shape: tuple  # (3, S, S)
    pixel_range: tuple  # (lo, hi) of valid pixel_values, for clamping synthetic images


def build_task(model, tok, data: ClipData, template: str = "a photo of {name}") -> ClipTask:
    target = data.labels_in("target")
    is_target = np.isin(data.labels, target)
    forget, retain = data.train & is_target, data.train & ~is_target
    size = model.config.vision_config.image_size
    return ClipTask(
        text_inputs=cm.encode_text(model, tok, cm.prompts(data.names, template)),
        target=target,
        forget_pixels=cm.to_pixels(data.pixels[forget], model),
        forget_labels=torch.as_tensor(data.labels[forget]),
        retain_pixels=cm.to_pixels(data.pixels[retain], model),
        retain_labels=torch.as_tensor(data.labels[retain]),
        image_shape=(3, size, size),
        pixel_range=cm.pixel_range(model),
    )
