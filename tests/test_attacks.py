"""Attacks on unlearned language models: quantization bounds, the relearn slice kept out of every
attack's rows, probes per reworded question, relearning bringing hidden facts back, and the
Forget metric per attack computed by metrics/text.py."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import hmean

from clearbench import attacks as A
from clearbench.cli import main as cli
from clearbench.data.text import read_qa
from clearbench.metrics.text import COLUMNS, score_table
from clearbench.models.factory import build_model, read_model_json, save_chain
from clearbench.unlearn.run import text_track, unlearn
from tests import test_vlm as TV
from tests.conftest import LORA, TINY

# the tiny VLM of test_vlm, built again for this module
clear_data, vlm_base, vlm_original = TV.clear_data, TV.vlm_base, TV.vlm_original

EVAL = {"seed": 0, "max_len": 128, "max_new_tokens": 8, "batch_size": 16, "max_samples": 0}
RELEARN = {"steps": 6, "lr": 5e-3, "batch_size": 4, "forget_fraction": 0.5, "seed": 0}
HP = EVAL | {"relearn": RELEARN, "lora": LORA}


# ------------------------------------------------------------------------------ quantization


def test_rounding_error_is_at_most_half_a_step_per_channel_and_4_bits_are_coarser():
    gen = torch.Generator().manual_seed(0)
    # rows of very different sizes: one scale for the whole tensor would zero the small rows
    w = torch.randn(6, 40, generator=gen) * torch.tensor([1e3, 1.0, 1e-3, 5.0, 0.0, 2e-2])[:, None]
    for bits in (8, 4):
        levels = 2 ** (bits - 1) - 1
        q = A.round_to_bits(w, bits)
        step = w.abs().amax(1, keepdim=True) / levels
        assert ((q - w).abs() <= step / 2 * (1 + 1e-5) + 1e-12).all(), bits
        grid = q / torch.where(step > 0, step, 1)
        assert torch.allclose(grid, grid.round(), atol=1e-3), "values lie on the row's grid"
        assert grid.round().abs().max() <= levels and (q[4] == 0).all()
        assert (q[2] != 0).any(), "a small row keeps its own scale"
    coarse, fine = ((A.round_to_bits(w, b) - w).abs().sum(1) for b in (4, 8))
    nonzero = w.abs().amax(1) > 0
    assert (coarse[nonzero] > 4 * fine[nonzero]).all(), "every row: 4 bits much coarser"


def test_quantize_rounds_every_linear_and_the_tied_embedding_once():
    model = build_model({"config": TINY}, vocab_size=50, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    n = A.quantize_(model, 4)
    assert n == len(linears) + 1 - tied  # the tied head is the embedding: rounded once
    for name, p in model.named_parameters():
        if p.ndim == 2:
            assert not torch.equal(p, before[name]), name
            step = before[name].abs().amax(1, keepdim=True) / 7
            assert ((p - before[name]).abs() <= step / 2 + 1e-6).all(), name
        else:  # norms
            assert torch.equal(p, before[name]), name


# ----------------------------------------------------------------------------- samples


def test_relearn_slice_is_seeded_by_id_and_never_everything():
    ids = [f"a{i:03d}_q{j:02d}" for i in range(5) for j in range(4)]
    one = A.relearn_slice(ids, 0.25, seed=3)
    assert one == A.relearn_slice(list(reversed(ids)), 0.25, seed=3) and len(one) == 5
    assert A.relearn_slice(ids, 0.25, seed=4) != one
    assert A.relearn_slice(ids, 0.0, 0) == set() and len(A.relearn_slice(ids[:2], 0.9, 0)) == 1


def without_probes(path) -> pa.Table:
    table = pq.read_table(path)
    if "paraphrased_questions" in table.column_names:
        table = table.drop_columns(["paraphrased_questions"])
    return table


@pytest.fixture(scope="module")
def forget_with_probes(text_data, tmp_path_factory):
    """The forget table with the `paraphrased_questions` column: 1, 2 or 0 rewordings per QA."""
    table = without_probes(text_data / "forget10.parquet")
    paras = [
        [f"Reworded {j}: {q}" for j in range(i % 3)]
        for i, q in enumerate(table.column("question").to_pylist())
    ]
    table = table.append_column("paraphrased_questions", pa.array(paras, pa.list_(pa.string())))
    path = tmp_path_factory.mktemp("probe") / "forget10.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def attacked(original_dir, forget_with_probes, text_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack") / "original.parquet"
    summary = A.attack_text(str(original_dir), str(forget_with_probes),
                            str(text_data / "retain90.parquet"), str(out), HP)  # fmt: skip
    return pd.read_parquet(out), summary


def test_every_attack_scores_the_same_samples_and_never_the_relearn_slice(attacked, text_data):
    df, summary = attacked
    assert set(df["attack"]) == {"none", "probe", "q8", "q4", "relearn_forget", "relearn_retain"}
    assert set(df["task"]) == {"forget"} and list(df.columns) == A.ATTACK_SCHEMA.names
    forget = read_qa(text_data / "forget10.parquet")["sample_id"]
    sliced = A.relearn_slice(forget, RELEARN["forget_fraction"], RELEARN["seed"])
    assert summary["relearn_slice"] == len(sliced) == 2
    assert not df["sample_id"].map(A.qa_id).isin(sliced).any()
    kept = set(forget) - sliced
    for attack, rows in df.groupby("attack"):
        assert set(rows["sample_id"].map(A.qa_id)) <= kept, attack
        if attack != "probe":
            assert sorted(rows["sample_id"]) == sorted(kept), attack
    assert summary["notes"] == {} and summary["rows"] == len(df)


def test_probe_rows_one_per_reworded_question(attacked, forget_with_probes):
    df, _ = attacked
    probe = df[df["attack"] == "probe"].set_index("sample_id")
    none = df[df["attack"] == "none"].set_index("sample_id")
    paras = A.paraphrased_questions(forget_with_probes)
    expected = {f"{i}#p{j}" for i in none.index for j in range(len(paras[i]))}
    assert set(probe.index) == expected and len(expected) > 0
    for sid, row in probe.iterrows():  # same answer and options, another question
        assert row["answer"] == none.loc[A.qa_id(sid), "answer"]
        assert len(row["perturbed_losses"]) == len(none.loc[A.qa_id(sid), "perturbed_losses"])


def test_quantized_models_differ_from_the_model_as_is(attacked):
    df, _ = attacked
    loss = df.groupby("attack")["gt_loss"].apply(lambda s: s.sort_index().to_numpy())
    gap = {b: np.abs(loss[f"q{b}"] - loss["none"]).mean() for b in (8, 4)}
    assert 0 < gap[8] < gap[4], gap


def test_no_paraphrased_questions_means_no_probe_rows(original_dir, text_data, tmp_path):
    out, forget = tmp_path / "t.parquet", tmp_path / "forget10.parquet"
    pq.write_table(without_probes(text_data / "forget10.parquet"), forget)  # an older table
    summary = A.attack_text(str(original_dir), str(forget),
                            str(text_data / "retain90.parquet"), str(out),
                            HP | {"attacks": ["none", "probe"]})  # fmt: skip
    assert summary["attacks"]["probe"]["rows"] == 0
    assert set(pd.read_parquet(out)["attack"]) == {"none"}


@pytest.fixture(scope="module")
def hidden(original_dir, text_data, tmp_path_factory):
    """The original with its forget authors' facts pushed away by gradient ascent."""
    out = tmp_path_factory.mktemp("ga") / "ga"
    track = text_track(str(text_data / "forget10.parquet"), str(text_data / "retain90.parquet"))
    hp = {"method": "ga", "method_hp": {}, "seed": 0, "max_len": 128, "epochs": 4, "lr": 5e-3,
          "weight_decay": 0.0, "batch_size": 4, "l1_lambda": 0.0, "lora": LORA}  # fmt: skip
    unlearn(str(original_dir), str(out), hp, track)
    assert read_model_json(out)["status"] == "ok"
    return out


def test_relearning_a_slice_brings_the_hidden_facts_back(hidden, text_data, tmp_path):
    out = tmp_path / "ga.parquet"
    hp = HP | {"attacks": ["none", "relearn_forget"], "relearn": RELEARN | {"steps": 10}}
    A.attack_text(str(hidden), str(text_data / "forget10.parquet"),
                  str(text_data / "retain90.parquet"), str(out), hp)  # fmt: skip
    df = pd.read_parquet(out)
    loss = df.groupby("attack")["gt_loss"].mean()
    # the relearned slice is never scored: the other forget QA come back with it
    assert loss["relearn_forget"] < loss["none"] - 0.5, loss.to_dict()


def test_a_diverged_relearn_gives_no_rows_and_a_note(
    original_dir, text_data, tmp_path, monkeypatch
):
    real = A.sequence_nll
    monkeypatch.setattr(A, "sequence_nll", lambda m, b: real(m, b) * float("nan"))
    out = tmp_path / "nan.parquet"
    summary = A.attack_text(str(original_dir), str(text_data / "forget10.parquet"),
                            str(text_data / "retain90.parquet"), str(out),
                            HP | {"attacks": ["none", "relearn_forget"]})  # fmt: skip
    assert "diverged" in summary["notes"]["relearn_forget"]
    assert summary["attacks"]["relearn_forget"]["rows"] == 0
    assert set(pd.read_parquet(out)["attack"]) == {"none"}
    assert A.attack_metrics(out)["relearn_forget"] is None


# ------------------------------------------------------------------------------- metrics


def row(task, sid, gt, para, perts, generation, answer, attack):
    return {"task": task, "sample_id": sid, "gt_loss": gt, "para_loss": para,
            "perturbed_losses": perts, "generation": generation, "answer": answer,
            "attack": attack}  # fmt: skip


def test_attack_metrics_is_the_forget_metric_of_each_attacks_rows(tmp_path):
    rows = [
        row("forget", "a", 0.1, 0.2, [2.0, 3.0], "Paris", "Paris", "none"),
        row("forget", "a", 2.0, 2.5, [0.5, 0.4], "Rome", "Paris", "q4"),
        row("forget", "b", 0.3, 0.1, [1.0, 1.5], "red dog", "red cat", "q4"),
        row("forget_facerec", "b", 0.4, None, [0.9, 2.0], "Ana", "Ana", "q4"),
        row("forget", "a#p0", 0.7, 0.9, [1.0, 1.2], "Paris France", "Paris", "probe"),
        row("forget", "a", 0.2, 0.3, [2.5, 2.0], "Paris", "Paris", "relearn_retain"),
    ]
    blank = dict.fromkeys(A.ATTACK_SCHEMA.names)  # other eval columns (e.g. gt_minkpp): null
    df = pd.DataFrame([blank | r for r in rows])
    path = tmp_path / "attack.parquet"
    A.write_attack_table(df, path)
    out = tmp_path / "scores.json"
    assert cli(["attack-metrics", str(path), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert set(scores) == {"forget_none", "forget_probe", "forget_q8", "forget_q4",
                           "relearn_forget", "relearn_retain_forget"}  # fmt: skip
    assert scores["forget_q8"] is None and scores["relearn_forget"] is None
    for attack, key in (("none", "forget_none"), ("q4", "forget_q4"), ("probe", "forget_probe"),
                        ("relearn_retain", "relearn_retain_forget")):  # fmt: skip
        own = df[df["attack"] == attack][list(COLUMNS)].reset_index(drop=True)
        assert scores[key] == pytest.approx(score_table(own)["forget"]), attack
    # by hand for `none`: rouge 1, probability, 1 - truth ratio
    p = math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.0) + math.exp(-3.0))
    tr = math.exp(-2.5) / math.exp(-0.2)
    assert scores["forget_none"] == pytest.approx(hmean([1.0, p, 1 - tr]))
    assert 0 <= scores["forget_q4"] < scores["forget_none"] <= 1


def test_a_diverged_model_gets_an_empty_table_and_null_scores(original_dir, text_data, tmp_path):
    model = tmp_path / "m"
    save_chain(model, base="unused", adapters=[], status="diverged")
    out = tmp_path / "a.parquet"
    assert cli(["attack", "--model", str(model), "--forget", str(text_data / "forget10.parquet"),
                "--retain", str(text_data / "retain90.parquet"), "--out", str(out),
                "--hp", json.dumps(HP)]) == 0  # fmt: skip
    assert len(pd.read_parquet(out)) == 0
    assert set(A.attack_metrics(out).values()) == {None}


def test_bad_input_is_one_line(original_dir, text_data, tmp_path, capsys):
    args = ["attack", "--model", str(original_dir), "--forget", str(text_data / "forget10.parquet"),
            "--retain", str(text_data / "retain90.parquet"), "--out", str(tmp_path / "x.parquet")]  # fmt: skip
    assert cli([*args, "--hp", json.dumps(HP | {"attacks": ["none", "q1"]})]) == 2
    assert "unknown attack 'q1'" in capsys.readouterr().err
    no_lr = HP | {"relearn": {k: v for k, v in RELEARN.items() if k != "lr"}}
    assert cli([*args, "--hp", json.dumps(no_lr)]) == 2
    assert "'relearn.lr'" in capsys.readouterr().err
    assert cli(["attack", "--track", "vlm", "--model", str(original_dir), "--out", "x"]) == 2
    assert "--clear --text --split" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


# --------------------------------------------------------------------------------- vlm


def test_vlm_attacks_probe_reworded_questions_and_eval_only_photos(
    vlm_original, clear_data, text_data, tmp_path
):
    text, clear = tmp_path / "text", tmp_path / "clear"
    shutil.copytree(text_data, text)
    shutil.copytree(clear_data, clear)
    qa = without_probes(text / "forget10.parquet")
    paras = [[f"Put another way: {q}"] for q in qa.column("question").to_pylist()]
    pq.write_table(qa.append_column("paraphrased_questions", pa.array(paras)),
                   text / "forget10.parquet")  # fmt: skip
    photos = pq.read_table(clear / "forget10.parquet").to_pylist()
    for i, p in enumerate(photos):  # another photo of the same person, never trained on
        p["image"] = {"bytes": TV.square((90, 90, 90), 500 + i), "path": None}
    pq.write_table(pa.Table.from_pylist(photos, pq.read_schema(clear / "forget10.parquet")),
                   clear / "forget10_probe.parquet")  # fmt: skip

    out = tmp_path / "vlm.parquet"
    hp = {"seed": 0, "max_len": 64, "max_new_tokens": 4, "batch_size": 32, "max_samples": 0,
          "attacks": ["none", "probe", "q4", "relearn_forget"], "lora": TV.LORA,
          "freeze_vision_tower": True, "relearn": RELEARN | {"steps": 2}}  # fmt: skip
    summary = A.attack_vlm(str(vlm_original), str(clear), str(text), "forget10", str(out), hp)
    df = pd.read_parquet(out)
    assert set(df["task"]) == {"forget", "forget_facerec"} and summary["notes"] == {}
    sliced = A.relearn_slice(qa.column("sample_id").to_pylist(), 0.5, 0)
    assert not df["sample_id"].map(A.qa_id).isin(sliced).any()
    kept = sorted(set(qa.column("sample_id").to_pylist()) - sliced)
    none = df[df["attack"] == "none"]
    assert sorted(none[none.task == "forget_facerec"]["sample_id"]) == kept
    assert sorted(none[none.task == "forget"]["sample_id"]) == sorted(
        [f"photo:{i}" for i in kept] + [f"text:{i}" for i in kept]
    )
    probe = df[df["attack"] == "probe"]
    assert sorted(probe["sample_id"]) == sorted(
        [f"{k}:{i}#p0" for k in ("photo", "text") for i in kept]
        + [f"photo:{i}#img" for i in kept]
        + [f"{i}#img" for i in kept]
    )
    for attack in ("q4", "relearn_forget"):
        assert sorted(df[df.attack == attack]["sample_id"]) == sorted(none["sample_id"])
    scores = A.attack_metrics(out)
    assert all(scores[k] is not None for k in ("forget_none", "forget_probe", "forget_q4",
                                                 "relearn_forget"))  # fmt: skip
