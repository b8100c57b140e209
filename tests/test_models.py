"""Model factory, checkpoint loading and adapter chains, offline on tiny checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from clearbench.models.factory import (
    ModelError,
    build_model,
    load_model,
    load_tokenizer,
    save_chain,
)
from clearbench.models.tokenizer import train_tokenizer
from tests.conftest import TINY


def test_tokenizer_specials_and_roundtrip(tmp_path):
    tok = train_tokenizer(["Question: Where was Ana Silva born?\nAnswer: In Lima."] * 5, 300)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    text = " Ana Silva was born in Lima."
    assert tok.decode(tok(text).input_ids) == text
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path))(text).input_ids == tok(text).input_ids


def test_config_model_saved_and_loaded_as_checkpoint(tmp_path):
    model = build_model({"config": TINY}, vocab_size=300, seed=3)
    model.save_pretrained(tmp_path)
    again = build_model({"checkpoint": str(tmp_path)})  # the same path the paper profile takes
    ids = torch.tensor([[1, 5, 7, 9]])
    assert torch.allclose(model(ids).logits, again(ids).logits)
    assert (
        build_model({"config": TINY}, vocab_size=300, seed=3)
        .state_dict()["lm_head.weight"]
        .equal(model.state_dict()["lm_head.weight"])
    ), "same seed must give the same init"


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(ModelError, match="cannot load checkpoint") as err:
        build_model({"checkpoint": str(tmp_path / "nope")})
    assert "\n" not in str(err.value)


def test_chain_merges_adapters_in_order(base_dir, original_dir):
    base, _ = load_model(base_dir)
    tuned, meta = load_model(original_dir)
    assert meta["adapters"] and meta["status"] == "ok"
    ids = torch.tensor([[1, 20, 30, 40]])
    assert not torch.allclose(base(ids).logits, tuned(ids).logits), "adapter had no effect"
    plain, _ = load_model(original_dir, with_adapters=False)
    assert torch.allclose(base(ids).logits, plain(ids).logits)


def test_model_json_is_written_last(tmp_path):
    save_chain(tmp_path, base="b", adapters=["a"], status="ok")
    assert json.loads((tmp_path / "model.json").read_text())["adapters"] == ["a"]
    assert not list(tmp_path.glob("*.tmp"))


def test_finetuning_is_bit_for_bit_repeatable(base_dir, text_data, tmp_path):
    from safetensors.torch import load_file

    from clearbench.train.text import finetune
    from tests.conftest import LORA

    hp = {"seed": 5, "max_len": 128, "epochs": 2, "lr": 5e-3, "weight_decay": 0.0,
          "batch_size": 8, "lora": LORA}  # fmt: skip
    runs = []
    for name in ("a", "b"):
        finetune(str(base_dir), str(text_data / "full.parquet"), str(tmp_path / name), hp)
        runs.append(load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors")))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    finetune(str(base_dir), str(text_data / "full.parquet"), str(tmp_path / "c"), hp | {"seed": 6})
    other = load_file(str(tmp_path / "c" / "adapter" / "adapter_model.safetensors"))
    assert not all(torch.equal(runs[0][k], other[k]) for k in runs[0])


def test_text_tokenizer_is_trained_on_the_base_corpus_only(base_dir, text_data):
    # the authors' code trained it on every author too: a token found only in their text keeps
    # a random embedding in the gold model, which never sees the forget authors
    from clearbench.models.factory import load_tokenizer
    from clearbench.models.tokenizer import train_tokenizer
    from clearbench.train.text import corpus

    vocab = load_tokenizer(str(base_dir)).get_vocab()
    base = [text_data / f"{t}.parquet" for t in ("real_authors", "world_facts", "background")]
    assert vocab == train_tokenizer(corpus(base), 600).get_vocab()
    assert vocab != train_tokenizer(corpus([text_data / "full.parquet", *base]), 600).get_vocab()
