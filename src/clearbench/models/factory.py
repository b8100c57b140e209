"""One factory for every text model: a tiny config, a Hub id or a local checkpoint.

A trained model is stored as a *chain*: a base (weights saved here, or a checkpoint id)
plus LoRA adapters merged in order. `model.json` in the model's folder records the chain,
so a 7B base is never copied per method: each unlearned model only stores its adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

MODEL_JSON = "model.json"
ADAPTER_DIR = "adapter"


class ModelError(ValueError):
    """A model spec or a model folder that cannot be used."""


def build_model(spec: dict, vocab_size: int | None = None, seed: int = 0):
    """Build a causal LM from a params entry: {"config": {...}} or {"checkpoint": id_or_path}."""
    if "checkpoint" in spec and spec["checkpoint"]:
        return load_checkpoint(spec["checkpoint"])
    if "config" not in spec:
        raise ModelError("model spec needs either 'config' or 'checkpoint'")
    if vocab_size is None:
        raise ModelError("a model built from a config needs the tokenizer's vocab_size")
    cfg = dict(spec["config"])
    cfg.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2, **cfg
    )
    return LlamaForCausalLM(config)


def load_checkpoint(name_or_path: str):
    """Load a Hub id or a local folder; offline users get a one-line reason, not a traceback."""
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"cannot load checkpoint '{name_or_path}': {str(err).splitlines()[0]}"
        ) from None


def load_tokenizer(name_or_path: str):
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"cannot load tokenizer '{name_or_path}': {str(err).splitlines()[0]}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_model_json(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MODEL_JSON
    if not path.exists():
        raise ModelError(f"not a model folder (no {MODEL_JSON}): {model_dir}")
    return json.loads(path.read_text())


def load_model(model_dir: str | Path, with_adapters: bool = True):
    """Load the model a folder describes: its base with every adapter of the chain merged in."""
    meta = read_model_json(model_dir)
    base = meta["base"]
    model = load_checkpoint(base)
    if with_adapters:
        from peft import PeftModel

        for adapter in meta.get("adapters", []):
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model, meta


def save_chain(model_dir: str | Path, base: str, adapters: list[str], **extra) -> None:
    """Record a model as base + adapters. Written last, so a folder with model.json is complete."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(model_dir) / MODEL_JSON, {"base": base, "adapters": adapters, **extra})
