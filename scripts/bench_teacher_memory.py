"""Peak memory of one KL unlearning step: the frozen original as the same model with its adapter
disabled (what clearbench does) against a separately loaded second copy of the base.

    .venv/bin/python scripts/bench_teacher_memory.py [--hidden 1024 --layers 8] [--device cuda]

Each variant runs in a fresh process (peak RSS cannot be reset); on CUDA the peak allocated
memory is reported as well.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def build_base(folder: Path, hidden: int, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64,
                         num_key_value_heads=hidden // 64, max_position_embeddings=512)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    from clearbench.models.factory import save_chain

    save_chain(folder, base=str(folder), adapters=[])


def one_step(folder: str, second_copy: bool, device: str, dtype: str) -> dict:
    import torch

    from clearbench.compute import CPU, peak_memory_mb, resolve_device
    from clearbench.models.factory import load_model
    from clearbench.train.qa import answer_outputs
    from clearbench.train.text import add_lora
    from clearbench.unlearn.methods import token_kl

    compute = CPU | {"device": device, "dtype": dtype}
    model, _ = load_model(folder, compute=compute)
    model = add_lora(model, {"r": 8, "alpha": 32, "dropout": 0.0,
                             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})  # fmt: skip
    teacher = load_model(folder, compute=compute)[0] if second_copy else None
    ids = torch.randint(3, 32000, (4, 256), device=resolve_device(device))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    current = answer_outputs(model, batch)
    with torch.no_grad():
        if teacher is not None:
            original = answer_outputs(teacher, batch)
        else:
            with model.disable_adapter():
                original = answer_outputs(model, batch)
    token_kl(original, current).mean().backward()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"peak_rss_mb": round(rss), "peak_gpu_mb": peak_memory_mb(resolve_device(device))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(one_step(a.child[0], a.child[1] == "copy", a.device, a.dtype)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_base(Path(tmp), a.hidden, a.layers)
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors")) / 2**20
        print(f"base: hidden {a.hidden}, {a.layers} layers, {size:.0f} MiB of float32 weights")
        for variant in ("disabled-adapter", "copy"):
            out = subprocess.run(
                [sys.executable, __file__, "--device", a.device, "--dtype", a.dtype,
                 "--child", tmp, variant],
                capture_output=True, text=True,
            )  # fmt: skip
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            print(f"{variant:17s} {out.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
