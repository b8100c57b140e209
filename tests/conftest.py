"""Shared fixtures: a tiny text dataset and a tiny trained base model, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOP_LEVEL_SKIP = {".git", ".venv", ".snakemake", "data", "results", "logs", "benchmarks",
                  ".pytest_cache", ".ruff_cache", "tmp", "runs"}  # fmt: skip


def skipped(folder: str, names: list[str]) -> list[str]:
    """shutil.copytree's ignore: a copy of the project without its results and caches."""
    top = Path(folder) == ROOT
    return [n for n in names if n == "__pycache__" or (top and n in TOP_LEVEL_SKIP)]


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout + done.stderr


def dry_run_with(work: Path, overlay: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    """`snakemake -n` of this project in `work` with a params overlay: how a user meets a bad
    params file before any job runs."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"),
         "-d", str(work), "--configfile", str(overlay)],
        capture_output=True, text=True, timeout=timeout, cwd=work,
    )  # fmt: skip


TOFU_DIR = Path(os.environ.get("CLEARBENCH_TOFU_DIR", ROOT.parent / "shared" / "data" / "tofu"))

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> Path:
    from clearbench.data.text import build_text_dataset

    out = tmp_path_factory.mktemp("text")
    build_text_dataset(
        source={"kind": "synthetic"},
        out_dir=out,
        seed=0,
        n_authors=6,
        qa_per_author=4,
        forget_fractions={"forget10": 0.1, "forget05": 0.05},
        n_general=6,
        n_background=2,
    )
    return out


TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 96,
    "tie_word_embeddings": True,
}
LORA = {"r": 8, "alpha": 16, "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}  # fmt: skip


@pytest.fixture(scope="session")
def base_dir(text_data, tmp_path_factory) -> Path:
    from clearbench.train.text import pretrain_base

    out = tmp_path_factory.mktemp("models") / "base"
    tables = [text_data / f"{t}.parquet" for t in ("real_authors", "world_facts", "background")]
    pretrain_base(
        [str(p) for p in tables],
        str(out),
        {"model": {"config": TINY}, "vocab_size": 600, "seed": 0, "max_len": 128,
         "epochs": 30, "lr": 3e-3, "weight_decay": 0.0, "batch_size": 8},
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def original_dir(base_dir, text_data) -> Path:
    """LoRA-finetuned hard on every author so unlearning has something to remove."""
    from clearbench.train.text import finetune

    out = base_dir.parent / "original"
    hp = {"seed": 0, "max_len": 128, "epochs": 40, "lr": 5e-3, "weight_decay": 0.0,
          "batch_size": 8, "lora": LORA}  # fmt: skip
    finetune(str(base_dir), str(text_data / "full.parquet"), str(out), hp)
    return out
