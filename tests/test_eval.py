"""The per-sample evaluation contract (DESIGN section 6)."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from clearbench.data.text import read_qa
from clearbench.eval.text import EVAL_SCHEMA, evaluate, pick_samples
from clearbench.models.factory import load_model, load_tokenizer, save_chain
from clearbench.train.qa import collate, encode

HP = {"seed": 0, "max_len": 128, "max_samples": 0, "max_new_tokens": 12, "batch_size": 5}


@pytest.fixture(scope="module")
def table(original_dir, text_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "original.parquet"
    tasks = {
        "forget": str(text_data / "forget10.parquet"),
        "world_facts": str(text_data / "world_facts.parquet"),
    }
    evaluate(str(original_dir), tasks, str(out), HP)
    return out


def test_schema_and_one_row_per_sample(table, text_data):
    assert pq.read_schema(table).names == EVAL_SCHEMA.names
    df = pd.read_parquet(table)
    forget = read_qa(text_data / "forget10.parquet")
    assert sorted(df[df.task == "forget"].sample_id) == sorted(forget.sample_id)
    assert not df.duplicated(["task", "sample_id"]).any()


def test_paraphrase_and_options_per_task(table, text_data):
    df = pd.read_parquet(table)
    forget, world = df[df.task == "forget"], df[df.task == "world_facts"]
    assert forget.para_loss.notna().all() and (forget.perturbed_losses.map(len) == 5).all()
    assert world.para_loss.isna().all(), "world facts have no paraphrase: null, not a copy"
    assert (world.perturbed_losses.map(len) >= 3).all()


def test_gt_loss_is_mean_answer_token_nll(table, original_dir, text_data):
    model, meta = load_model(original_dir)
    tok = load_tokenizer(meta["base"])
    row = read_qa(text_data / "forget10.parquet").sort_values("sample_id").iloc[0]
    ids, labels = encode(tok, row.question, row.answer, 128)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    target = torch.tensor(labels[1:])
    scored = target != -100
    expected = torch.nn.functional.cross_entropy(logits[scored], target[scored]).item()
    got = pd.read_parquet(table).set_index("sample_id").loc[row.sample_id, "gt_loss"]
    assert math.isclose(got, expected, rel_tol=1e-4)
    # prompt tokens are never scored
    assert collate([(ids, labels)], 0)["labels"][0, : len(ids) - scored.sum() - 1].eq(-100).all()


def test_generation_is_greedy_and_repeatable(table, original_dir, text_data, tmp_path):
    again = tmp_path / "again.parquet"
    evaluate(str(original_dir), {"forget": str(text_data / "forget10.parquet")}, str(again), HP)
    a = pd.read_parquet(table).query("task == 'forget'").set_index("sample_id")
    b = pd.read_parquet(again).set_index("sample_id")
    assert (a.loc[b.index, "generation"] == b.generation).all()
    assert a.generation.str.len().gt(0).all()


def test_subset_is_seeded_and_stable(text_data):
    df = read_qa(text_data / "full.parquet")
    one, two = pick_samples(df, 5, seed=1), pick_samples(df.sample(frac=1, random_state=3), 5, 1)
    assert list(one.sample_id) == list(two.sample_id)
    assert list(pick_samples(df, 5, seed=2).sample_id) != list(one.sample_id)


def test_diverged_model_gets_empty_table(tmp_path, text_data):
    save_chain(tmp_path / "m", base="unused", adapters=[], status="diverged")
    out = tmp_path / "e.parquet"
    result = evaluate(
        str(tmp_path / "m"), {"forget": str(text_data / "forget10.parquet")}, str(out), HP
    )
    assert result == {"status": "diverged", "rows": 0}
    assert pq.read_schema(out).names == EVAL_SCHEMA.names and len(pd.read_parquet(out)) == 0


def test_long_prompt_never_swallows_the_answer(base_dir):
    tok = load_tokenizer(str(base_dir))
    ids, labels = encode(tok, "Where " * 60 + "was she born?", "In Lima.", 32)
    answer = tok(" In Lima.", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert len(ids) == 32 and ids[-len(answer) :] == answer
    assert [t for t in labels if t != -100] == answer
