"""Where the language models run and in what precision (`compute` in params, DESIGN section 5).

Every text and vlm job gets the same four keys in its --hp as `compute`:
  device                  cpu | cuda | auto (cuda when one is visible, else cpu)
  dtype                   float32 | bfloat16 | float16: the base model's weights; LoRA adapters
                          stay float32 and every loss is reduced in float32
  quantize                none | 8bit | 4bit: load a checkpoint base through bitsandbytes (QLoRA)
  gradient_checkpointing  recompute activations in the backward pass (memory for time)

This module imports torch lazily: the Snakefile parses the params without it.
"""

from __future__ import annotations

import os
from pathlib import Path

DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")
QUANTIZE = ("none", "8bit", "4bit")
KEYS = ("device", "dtype", "quantize", "gradient_checkpointing")
CPU = {"device": "cpu", "dtype": "float32", "quantize": "none", "gradient_checkpointing": False}


class ComputeError(ValueError):
    """A compute setting this machine or this model cannot honour."""


def compute_hp(hp: dict) -> dict:
    """The job's compute settings (cpu/float32 when absent: tests and hand-run steps)."""
    return CPU | dict(hp.get("compute") or {})


def cuda_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU, without importing torch (the Snakefile's
    check runs before any job and must stay cheap)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def check_device(compute: dict) -> None:
    """Stop before any local job runs when the params ask for a GPU this machine lacks."""
    if compute["device"] == "cuda" and not cuda_visible():
        raise ComputeError(
            "params error at compute.device: 'cuda' but this machine has no visible NVIDIA GPU"
            " (use cpu or auto, or submit with the slurm profile)"
        )


def resolve_device(name: str):
    import torch

    if name not in DEVICES:
        raise ComputeError(f"compute.device must be one of {', '.join(DEVICES)}, got '{name}'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ComputeError("compute.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ComputeError(f"compute.dtype must be one of {', '.join(DTYPES)}, got '{name}'")
    return getattr(torch, name)


def quantization_config(compute: dict):
    """transformers' BitsAndBytesConfig for `quantize`, or None. bitsandbytes is optional: it
    is imported only here, and its absence is one line, not a traceback."""
    mode = compute["quantize"]
    if mode == "none":
        return None
    if mode not in QUANTIZE:
        raise ComputeError(f"compute.quantize must be one of {', '.join(QUANTIZE)}, got '{mode}'")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ComputeError(
            f"compute.quantize: {mode} needs bitsandbytes (pip install bitsandbytes, on a CUDA"
            " machine)"
        ) from None
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch_dtype(compute["dtype"]),
        bnb_4bit_use_double_quant=True,
    )


def to_device(batch: dict, model) -> dict:
    """A batch on the model's device; pixels in the model's floating dtype (token ids and
    masks keep theirs)."""
    device = model.device
    dtype = model.dtype
    out = {}
    for key, value in batch.items():
        if key == "pixel_values":
            out[key] = value.to(device=device, dtype=dtype)
        elif hasattr(value, "to"):
            out[key] = value.to(device)
        else:
            out[key] = value
    return out


def peak_memory_mb(device) -> float | None:
    """Peak accelerator memory since the last reset (None on the CPU)."""
    import torch

    if getattr(device, "type", device) == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return None
