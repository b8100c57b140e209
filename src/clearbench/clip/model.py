"""The clip track's dual encoder: transformers' CLIPModel, tiny (built here) or a checkpoint.

Conventions every clip module (and the unlearning methods) rely on:

- pixel_values: float (B, 3, S, S), `(uint8 / 255 - mean) / std` with the model's own mean and
  std; the tiny model uses mean = std = 0.5, i.e. uint8 / 127.5 - 1 in [-1, 1]. `to_pixels`
  is the one way in, for both kinds of model.
- text: `encode_text` tokenizes with <s> ... </s> (the checkpoint's tokenizer adds its own
  start/end tokens) and pads; the text tower pools at the end token.
- embeddings are L2-normalised; `zero_shot_logits` = logit_scale.exp() * img @ text.T.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from clearbench.io import write_json_atomic
from clearbench.models.factory import (
    MODEL_JSON,
    ModelError,
    load_checkpoint,
    load_image_processor,
    load_tokenizer,
)

# CLIPTextTransformer pools the token whose id is config.eos_token_id, except that an
# eos_token_id of exactly 2 selects a legacy path that pools argmax(input_ids) (right for
# OpenAI's tokenizer, whose end token has the highest id; wrong for ours). So our CLIP
# tokenizer puts the end token at id 1, and the config says so.
SPECIALS = ["<pad>", "</s>", "<s>"]  # ids 0, 1, 2
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
TINY_MEAN = TINY_STD = (0.5, 0.5, 0.5)  # uint8 / 127.5 - 1

TINY_CLIP_CONFIG = dict(
    vision_config=dict(
        image_size=32,
        patch_size=4,  # 64 patches: patch 8 (16) lost the face details (other acc 0.49)
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    ),
    text_config=dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
    ),
    projection_dim=64,
)


def prompts(names, template: str = "a photo of {name}") -> list[str]:
    return [template.format(name=n) for n in names]


def train_clip_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (as models.tokenizer) that wraps every text as <s> text </s>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    # the template runs after truncation, so the end token is never cut off
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def clip_config(cfg: dict, tok) -> CLIPConfig:
    cfg = dict(cfg)
    if "vision_config" not in cfg or "text_config" not in cfg:
        raise ModelError("a CLIP model config needs 'vision_config' and 'text_config'")
    text = dict(cfg.pop("text_config"))
    text.update(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if tok.eos_token_id == 2:
        raise ModelError("a CLIP tokenizer must not have eos id 2 (legacy pooling path)")
    return CLIPConfig(text_config=text, vision_config=dict(cfg.pop("vision_config")), **cfg)


def build_clip(spec: dict, tokenizer=None, seed: int = 0):
    """(model, tokenizer) from a params entry: {"config": {...}} (random init, with the given
    tokenizer) or {"checkpoint": id_or_path} (its own tokenizer and image processor)."""
    if spec.get("checkpoint"):
        return load_clip_checkpoint(spec["checkpoint"])
    if "config" not in spec:
        raise ModelError("clip model spec needs either 'config' or 'checkpoint'")
    if tokenizer is None:
        raise ModelError("a CLIP built from a config needs a tokenizer")
    torch.manual_seed(seed)
    model = CLIPModel(clip_config(spec["config"], tokenizer))
    set_pixel_norm(model, TINY_MEAN, TINY_STD)
    model.eval()
    return model, tokenizer


def load_clip_checkpoint(name_or_path: str):
    model = load_checkpoint(name_or_path)
    if not isinstance(model, CLIPModel):
        raise ModelError(f"checkpoint '{name_or_path}' is not a CLIP model")
    tok = load_tokenizer(name_or_path)
    try:
        proc = load_image_processor(name_or_path)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except ModelError:  # a checkpoint saved without its processor: CLIP's own statistics
        mean, std = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
    set_pixel_norm(model, mean, std)
    model.eval()
    return model, tok


def set_pixel_norm(model, mean, std) -> None:
    # a plain attribute: it survives copy.deepcopy and is recorded in model.json by save_clip
    model.pixel_norm = {
        "image_mean": [float(m) for m in mean],
        "image_std": [float(s) for s in std],
    }


def pixel_norm(model_or_meta) -> tuple[list[float], list[float], int]:
    """(mean, std, size) of a model or of a model.json dict."""
    if isinstance(model_or_meta, dict):
        m = model_or_meta
        return m["image_mean"], m["image_std"], m["image_size"]
    norm = getattr(model_or_meta, "pixel_norm", None) or {
        "image_mean": TINY_MEAN,
        "image_std": TINY_STD,
    }
    size = model_or_meta.config.vision_config.image_size
    return list(norm["image_mean"]), list(norm["image_std"]), size


def to_pixels(images, model_or_meta) -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> pixel_values (N, 3, S, S) for this model."""
    mean, std, size = pixel_norm(model_or_meta)
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.to(device_of(model_or_meta))


def device_of(model_or_meta) -> torch.device:
    """Where a model's inputs go (a model.json dict: the CPU)."""
    if isinstance(model_or_meta, torch.nn.Module):
        return next(model_or_meta.parameters()).device
    return torch.device("cpu")


def pixel_range(model_or_meta) -> tuple[float, float]:
    """The (lo, hi) every valid pixel value lies in (widest over the channels)."""
    mean, std, _ = pixel_norm(model_or_meta)
    lo = min((0 - m) / s for m, s in zip(mean, std, strict=True))
    hi = max((1 - m) / s for m, s in zip(mean, std, strict=True))
    return lo, hi


def encode_text(model, tok, texts) -> dict:
    """input_ids and attention_mask (padded, end token kept) of `texts`."""
    max_len = model.config.text_config.max_position_embeddings
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    device = device_of(model)
    return {
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": enc["attention_mask"].to(device),
    }


def text_embeddings(model, text_inputs: dict) -> torch.Tensor:
    out = model.get_text_features(**text_inputs)
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def image_embeddings(model, pixel_values: torch.Tensor) -> torch.Tensor:
    out = model.get_image_features(pixel_values=pixel_values)
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def zero_shot_logits(model, pixel_values, text_emb) -> torch.Tensor:
    return model.logit_scale.exp() * image_embeddings(model, pixel_values) @ text_emb.T


def is_finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def save_clip(model, tok, out_dir, **meta) -> None:
    """Weights (safetensors) and tokenizer, then model.json last: a folder with model.json is
    complete. meta: status, rte_seconds, ... (JSON values)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_JSON).unlink(missing_ok=True)  # an interrupted overwrite must not look complete
    model.save_pretrained(out)
    tok.save_pretrained(out)
    mean, std, size = pixel_norm(model)
    info = {"kind": "clip", "image_mean": mean, "image_std": std, "image_size": size}
    meta = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in meta.items()
    }
    write_json_atomic(out / MODEL_JSON, {**info, **meta})


def load_clip(model_dir):
    """(model, tokenizer, meta) of a folder written by save_clip; ModelError on a bad folder."""
    try:
        meta = json.loads((Path(model_dir) / MODEL_JSON).read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("kind") != "clip":
        raise ModelError(f"not a clip model folder (no valid {MODEL_JSON}): {model_dir}")
    model = load_checkpoint(str(model_dir))
    if not isinstance(model, CLIPModel):
        raise ModelError(f"{model_dir} does not hold a CLIP model")
    set_pixel_norm(model, meta["image_mean"], meta["image_std"])
    model.eval()
    return model, load_tokenizer(str(model_dir)), meta
