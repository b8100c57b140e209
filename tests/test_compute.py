"""Device and precision of the language tracks (`compute` in params, DESIGN section 5): bfloat16
bases with float32 adapters, gradient checkpointing, the frozen original as the same model with
the adapter disabled, batched generation in the right order, and one-line errors for a GPU or a
quantization this machine cannot give."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from clearbench import compute
from clearbench.compute import ComputeError, check_device, compute_hp, quantization_config
from clearbench.eval.text import by_length, greedy_answers
from clearbench.models.factory import load_model, load_tokenizer, read_model_json
from clearbench.train.qa import answer_outputs, collate, encode
from clearbench.train.text import finetune, start_adapter_run
from clearbench.unlearn.methods import Context
from tests.conftest import LORA, ROOT

HP = {"seed": 0, "max_len": 128, "epochs": 2, "lr": 5e-3, "weight_decay": 0.0, "batch_size": 8,
      "lora": LORA}  # fmt: skip
BF16 = compute.CPU | {"dtype": "bfloat16"}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def qa_batch(model_dir, data_path, n=8):
    import pandas as pd

    tok = load_tokenizer(read_model_json(model_dir)["base"])
    df = pd.read_parquet(data_path).head(n)
    rows = [encode(tok, q, a, 128) for q, a in zip(df["question"], df["answer"], strict=True)]
    return collate(rows, tok.pad_token_id)


def test_bfloat16_base_trains_float32_adapters_and_the_adapter_reloads(
    base_dir, text_data, tmp_path
):
    out = tmp_path / "bf16"
    summary = finetune(str(base_dir), str(text_data / "full.parquet"), str(out),
                       HP | {"compute": BF16})  # fmt: skip
    assert summary["status"] == "ok" and math.isfinite(summary["final_loss"])
    # during training: base weights bfloat16, LoRA weights float32
    _, model, *_ = start_adapter_run(str(out), str(tmp_path / "again"), HP | {"compute": BF16})
    dtypes = {("lora_" in n, p.dtype) for n, p in model.named_parameters()}
    assert (True, torch.float32) in dtypes and (False, torch.bfloat16) in dtypes
    assert (True, torch.bfloat16) not in dtypes
    # the saved adapter reloads in either precision, and the two agree to bfloat16's precision
    batch = qa_batch(out, text_data / "forget10.parquet")
    low, _ = load_model(out, compute=BF16)
    high, _ = load_model(out)
    assert next(low.parameters()).dtype == torch.bfloat16
    nll_low, nll_high = answer_outputs(low, batch).nll(), answer_outputs(high, batch).nll()
    assert nll_low.dtype == torch.float32  # losses are reduced in float32
    assert torch.isfinite(nll_low).all()
    assert torch.allclose(nll_low, nll_high, rtol=0.05, atol=0.05)


def test_gradient_checkpointing_gives_the_same_gradients(original_dir, text_data, tmp_path):
    batch = qa_batch(original_dir, text_data / "forget10.parquet")
    grads = []
    for flag in (False, True):
        hp = HP | {"compute": compute.CPU | {"gradient_checkpointing": flag}}
        _, model, *_ = start_adapter_run(str(original_dir), str(tmp_path / str(flag)), hp)
        model.train()
        answer_outputs(model, batch).nll().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        core = model.get_base_model()
        assert any(getattr(m, "gradient_checkpointing", False) for m in core.modules()) is flag
    assert grads[0].keys() == grads[1].keys()
    # LoRA B starts at zero, so A's gradient is zero: compare B, which must be non-zero
    b = [n for n in grads[0] if "lora_B" in n]
    assert any(grads[0][n].abs().sum() > 0 for n in b)
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6), n


def test_frozen_original_is_the_same_model_with_its_adapter_disabled(
    original_dir, text_data, tmp_path
):
    """The teacher of KL/SCRUB/RMU is the model being trained with its adapter switched off: it
    must give exactly what a separately loaded original gives, after training has moved it."""
    batch = qa_batch(original_dir, text_data / "forget10.parquet")
    _, model, *_ = start_adapter_run(str(original_dir), str(tmp_path / "u"), HP)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)  # an adapter that changes the outputs
    ctx = Context(model, {}, 0)
    separate, _ = load_model(original_dir)
    expected = answer_outputs(separate, batch).logits
    assert not torch.allclose(ctx.answers(batch).logits, expected, atol=1e-3)
    assert torch.allclose(ctx.original(batch).logits, expected, atol=1e-5)
    base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    assert base_params == sum(p.numel() for p in separate.parameters())  # one copy, not two


def test_batched_generation_sorted_by_length_keeps_each_answer_with_its_question(original_dir):
    model, meta = load_model(original_dir)
    tok = load_tokenizer(meta["base"])
    questions = ["Where was it?", "What is the full name of the author born in 1960 in Lima?",
                 "Who?", "What genre does the author write in, and what awards did they win?",
                 "When?"]  # fmt: skip
    one_by_one = [greedy_answers(model, tok, [q], 12, 1)[0] for q in questions]
    assert greedy_answers(model, tok, questions, 12, 2) == one_by_one
    assert list(by_length([5, 1, 3, 1], 2)) == [[1, 3], [2, 0]]


def test_cuda_on_a_machine_without_one_is_one_line(monkeypatch):
    monkeypatch.setattr(compute, "cuda_visible", lambda: False)
    with pytest.raises(ComputeError, match=r"^params error at compute.device: 'cuda'"):
        check_device(compute.CPU | {"device": "cuda"})
    check_device(compute.CPU | {"device": "auto"})  # auto falls back to the CPU
    if not torch.cuda.is_available():
        with pytest.raises(ComputeError, match="no CUDA device"):
            compute.resolve_device("cuda")
        assert compute.resolve_device("auto").type == "cpu"


def test_quantization_without_bitsandbytes_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ComputeError, match=r"4bit needs bitsandbytes \(pip install"):
        quantization_config(compute.CPU | {"quantize": "4bit"})
    assert quantization_config(compute.CPU) is None


def test_a_job_without_compute_runs_on_the_cpu_in_float32():
    assert compute_hp({}) == compute.CPU
    assert compute_hp({"compute": {"dtype": "bfloat16"}})["device"] == "cpu"


@pytest.mark.slow
def test_a_local_run_that_asks_for_cuda_stops_before_any_job(tmp_path):
    if compute.cuda_visible():
        pytest.skip("this machine has a GPU")
    overlay = tmp_path / "cuda.yaml"
    overlay.write_text("compute:\n  device: cuda\n")
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(tmp_path),
         "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(overlay),
         "--", "results/leaderboard.csv"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: params error at compute.device: 'cuda' but this machine has no visible NVIDIA"
        " GPU (use cpu or auto, or submit with the slurm profile)"
    ]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "logs").exists()
    # a dry-run of the same params needs no GPU here
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--directory", str(tmp_path),
         "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(overlay),
         "--", "results/leaderboard.csv"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-2000:]


@needs_cuda
def test_cuda_bfloat16_finetune_and_evaluation(base_dir, text_data, tmp_path):
    gpu = compute.CPU | {"device": "cuda", "dtype": "bfloat16"}
    out = tmp_path / "cuda"
    summary = finetune(str(base_dir), str(text_data / "full.parquet"), str(out),
                       HP | {"compute": gpu})  # fmt: skip
    assert summary["status"] == "ok" and math.isfinite(summary["final_loss"])
    model, meta = load_model(out, compute=gpu)
    assert model.device.type == "cuda"
    batch = qa_batch(out, text_data / "forget10.parquet")
    assert torch.isfinite(answer_outputs(model, batch).nll()).all()
    assert greedy_answers(model, load_tokenizer(meta["base"]), ["Who?"], 8, 1)
