"""One factory for every language model: a tiny config, a Hub id or a local checkpoint.

A config with `vision_config` and `text_config` builds a LLaVA (CLIP vision tower, projector,
Llama); any other config builds a plain Llama. A checkpoint loads as what its config says (a CLIP checkpoint as a
CLIPModel, for the clip track; tiny CLIPs are built in clearbench.clip.model).

A trained model is stored as a *chain*: a base (weights saved here, or a checkpoint id)
plus LoRA adapters merged in order. `model.json` in the model's folder records the chain,
so a 7B base is never copied per method: each unlearned model only stores its adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    CLIPModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from clearbench.compute import quantization_config, resolve_device, torch_dtype
from clearbench.io import write_json_atomic

MODEL_JSON = "model.json"
ADAPTER_DIR = "adapter"


class ModelError(ValueError):
    """A model spec or a model folder that cannot be used."""


def build_model(
    spec: dict, vocab_size: int | None = None, seed: int = 0, image_token_id: int | None = None
):
    """Build a model from a params entry: {"config": {...}} or {"checkpoint": id_or_path}.

    A LLaVA config also needs the id of the tokenizer's `<image>` placeholder token.
    """
    if "checkpoint" in spec and spec["checkpoint"]:
        return load_checkpoint(spec["checkpoint"], trust_remote_code=trusts_remote_code(spec))
    if "config" not in spec:
        raise ModelError("model spec needs either 'config' or 'checkpoint'")
    if vocab_size is None:
        raise ModelError("a model built from a config needs the tokenizer's vocab_size")
    cfg = dict(spec["config"])
    torch.manual_seed(seed)
    if "vision_config" in cfg:
        return LlavaForConditionalGeneration(llava_config(cfg, vocab_size, image_token_id))
    return LlamaForCausalLM(llama_config(cfg, vocab_size))


def llama_config(cfg: dict, vocab_size: int) -> LlamaConfig:
    cfg = dict(cfg)
    cfg.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    return LlamaConfig(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2, **cfg)


def llava_config(cfg: dict, vocab_size: int, image_token_id: int | None) -> LlavaConfig:
    """Tiny LLaVA: the keys are LlavaConfig's own (vision_config, text_config, projector...)."""
    if image_token_id is None:
        raise ModelError("a LLaVA built from a config needs the tokenizer's <image> token id")
    if "text_config" not in cfg:
        raise ModelError("a LLaVA model config needs 'text_config' next to 'vision_config'")
    vision = CLIPVisionConfig(**cfg.pop("vision_config"))
    text = llama_config(cfg.pop("text_config"), vocab_size)
    # one placeholder per patch: the "default" feature strategy drops the CLS token
    n_image_tokens = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=n_image_tokens,
        **cfg,
    )


def from_pretrained(what: str, auto, name_or_path: str, trust_remote_code=False, **kwargs):
    """`auto.from_pretrained` of a Hub id or a local folder; offline users get a one-line reason
    naming the `what` that could not be loaded, not a traceback.

    Python code shipped with a checkpoint (an `auto_map` in its config) never runs unless
    `trust_remote_code` is True, which only the model spec's `trust_remote_code: true` in params
    asks for. Weights load from safetensors, or through torch.load with weights_only=True
    (transformers' default, kept)."""
    try:
        return auto.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not is_shape_error(err):
            raise  # e.g. out of memory: not a property of the checkpoint
        raise ModelError(f"cannot load {what} '{name_or_path}': {first_line(err)}") from None


def is_shape_error(err: Exception) -> bool:
    """torch's load_state_dict error (or transformers') for tensors whose shapes do not match
    the model's."""
    return any(s in str(err) for s in ("size mismatch", "shape", "ignore_mismatched_sizes"))


def first_line(err: Exception) -> str:
    """The first non-empty line of an error (torch's start with 'Error(s) in loading...')."""
    if "ignore_mismatched_sizes" in str(err):  # transformers logged the details, not raised them
        return "its tensor shapes do not match its config (size mismatch)"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else type(err).__name__


def trusts_remote_code(spec_or_meta: dict) -> bool:
    """A model spec (params) or a model.json that turns `trust_remote_code` on."""
    return spec_or_meta.get("trust_remote_code") is True


def load_checkpoint(
    name_or_path: str, compute: dict | None = None, trust_remote_code: bool = False
):
    """A checkpoint as `compute` asks (see clearbench.compute): on its device, in its dtype,
    quantized through bitsandbytes if asked. No `compute`: CPU, float32."""
    trust = {"trust_remote_code": trust_remote_code}
    config = from_pretrained("checkpoint", AutoConfig, name_or_path, **trust)
    if is_clip(config):
        auto = CLIPModel  # a dual encoder, not a generator: no causal-LM/VLM auto class fits
    elif is_vlm(config):
        auto = AutoModelForImageTextToText
    else:
        auto = AutoModelForCausalLM
    if compute is None:
        return from_pretrained("checkpoint", auto, name_or_path, **trust)
    device = resolve_device(compute["device"])
    kwargs = {"dtype": torch_dtype(compute["dtype"])}
    quantization = quantization_config(compute)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if device.type != "cpu":
        kwargs["device_map"] = {"": device}  # straight onto the GPU, never a float32 copy in RAM
    return from_pretrained("checkpoint", auto, name_or_path, **trust, **kwargs)


def is_clip(config) -> bool:
    return getattr(config, "model_type", None) == "clip"


def is_vlm(config) -> bool:
    return getattr(config, "vision_config", None) is not None


def load_image_processor(name_or_path: str, trust_remote_code: bool = False):
    """The checkpoint's image processor, PIL backend (torchvision does not import here)."""
    from transformers import AutoImageProcessor  # 1.5 s of imports only the vlm track needs

    return from_pretrained(
        "image processor", AutoImageProcessor, name_or_path, trust_remote_code, backend="pil"
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    tok = from_pretrained("tokenizer", AutoTokenizer, name_or_path, trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def read_model_json(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MODEL_JSON
    if not path.exists():
        raise ModelError(f"not a model folder (no {MODEL_JSON}): {model_dir}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read {path}: {err}") from None
    if not isinstance(meta, dict) or "base" not in meta:
        raise ModelError(f"cannot read {path}: no 'base' entry")
    return meta


def load_model(model_dir: str | Path, with_adapters: bool = True, compute: dict | None = None):
    """Load the model a folder describes: its base with every adapter of the chain merged in,
    once, on the device and in the dtype of `compute` (see `load_checkpoint`)."""
    meta = read_model_json(model_dir)
    base = meta["base"]
    model = load_checkpoint(base, compute, trusts_remote_code(meta))
    if with_adapters:
        from peft import PeftModel

        for adapter in meta.get("adapters", []):
            try:
                model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                if isinstance(err, RuntimeError) and not is_shape_error(err):
                    raise
                raise ModelError(
                    f"{model_dir}: cannot merge adapter '{adapter}' into '{base}': {first_line(err)}"
                ) from None
    model.eval()
    return model, meta


def save_chain(
    model_dir: str | Path,
    base: str,
    adapters: list[str],
    trust_remote_code: bool = False,
    **extra,
) -> None:
    """Record a model as base + adapters. Written last, so a folder with model.json is complete.

    `trust_remote_code` (recorded only when on) lets every later load of the base run its code.
    """
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    trust = {"trust_remote_code": True} if trust_remote_code else {}
    write_json_atomic(
        Path(model_dir) / MODEL_JSON, {"base": base, "adapters": adapters, **trust, **extra}
    )
