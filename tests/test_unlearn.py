"""Unlearning methods must do what they claim on a case built for it."""

from __future__ import annotations

import pytest

from clearbench.data.text import read_qa
from clearbench.eval.text import answer_losses
from clearbench.models.factory import load_model, load_tokenizer, read_model_json
from clearbench.unlearn.methods import METHODS, register
from clearbench.unlearn.text import unlearn
from tests.conftest import LORA


def hp(method, **kw):
    return {"method": method, "seed": 0, "max_len": 128, "epochs": 8, "lr": 5e-3,
            "weight_decay": 0.0, "batch_size": 4, "l1_lambda": 0.0, "lora": LORA} | kw  # fmt: skip


def mean_loss(model_dir, table):
    model, meta = load_model(model_dir)
    tok = load_tokenizer(meta["base"])
    df = read_qa(table)
    return float(
        answer_losses(model, tok, list(zip(df.question, df.answer, strict=True)), 128, 16).mean()
    )


@pytest.fixture(scope="module")
def runs(original_dir, text_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("unlearn")
    forget, retain = str(text_data / "forget10.parquet"), str(text_data / "retain90.parquet")
    made = {}
    for name, kw in {
        "ga": {}, "gd": {}, "retain_ft": {}, "ga_l1": {"l1_lambda": 0.05},
    }.items():  # fmt: skip
        method = name.removesuffix("_l1")
        unlearn(str(original_dir), forget, retain, str(out / name), hp(method, **kw))
        made[name] = out / name
    return made


def test_ga_raises_forget_loss(runs, original_dir, text_data):
    forget = text_data / "forget10.parquet"
    before = mean_loss(original_dir, forget)
    assert mean_loss(runs["ga"], forget) > before + 1.0


def test_gd_keeps_retain_better_than_ga(runs, text_data):
    retain = text_data / "retain90.parquet"
    assert mean_loss(runs["gd"], retain) < mean_loss(runs["ga"], retain)


def test_retain_ft_keeps_retain(runs, original_dir, text_data):
    retain = text_data / "retain90.parquet"
    kept = mean_loss(runs["retain_ft"], retain)
    assert abs(kept - mean_loss(original_dir, retain)) < 0.3
    assert kept < mean_loss(runs["ga"], retain) - 1.0


def test_l1_shrinks_the_unlearning_adapter(runs):
    from safetensors.torch import load_file

    def l1(run):
        weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        return sum(float(w.abs().sum()) for w in weights.values())

    assert l1(runs["ga_l1"]) < l1(runs["ga"])


def test_every_run_records_chain_and_time(runs, original_dir):
    for run in runs.values():
        meta = read_model_json(run)
        assert meta["status"] == "ok" and meta["rte_seconds"] > 0
        assert (
            meta["adapters"][: len(read_model_json(original_dir)["adapters"])]
            == read_model_json(original_dir)["adapters"]
        )


def test_nan_loss_marks_diverged_without_crash(original_dir, text_data, tmp_path):
    @register("test_nan")
    def nan_loss(ctx, forget, retain):
        return ctx.nll(forget) * float("nan")

    try:
        out = tmp_path / "nan"
        result = unlearn(
            str(original_dir), str(text_data / "forget10.parquet"),
            str(text_data / "retain90.parquet"), str(out), hp("test_nan"),
        )  # fmt: skip
        assert result["status"] == "diverged"
        meta = read_model_json(out)
        assert meta["status"] == "diverged"
        assert meta["adapters"] == read_model_json(original_dir)["adapters"], "no NaN adapter kept"
    finally:
        METHODS.pop("test_nan")


def test_unknown_method_is_one_line_error(original_dir, text_data, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        unlearn(str(original_dir), "", "", str(tmp_path / "x"), hp("nope"))


def test_huge_learning_rate_reaches_diverged_or_finishes(original_dir, text_data, tmp_path):
    # GA with an absurd step size must end as a status, never as an exception
    result = unlearn(
        str(original_dir), str(text_data / "forget10.parquet"), str(text_data / "retain90.parquet"),
        str(tmp_path / "big"), hp("ga", lr=1e4, epochs=3),
    )  # fmt: skip
    assert result["status"] in {"ok", "diverged"}
