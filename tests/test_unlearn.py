"""Unlearning methods of the language tracks: each loss against a value computed by hand, the
authors' defects named one by one, and every method moving a real model."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pandas as pd
import pytest
import torch
import yaml

from clearbench.data.idk import idk_answer, idk_answers
from clearbench.data.text import read_qa
from clearbench.eval.text import answer_losses
from clearbench.models.factory import load_model, load_tokenizer, read_model_json
from clearbench.train.qa import Answers
from clearbench.unlearn.methods import METHODS, Context, Step, register, token_kl
from clearbench.unlearn.registry import DECLARED, Declared
from clearbench.unlearn.run import LOSSES, reference_logps, text_track, train_reference, unlearn
from tests.conftest import LORA, ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
METHOD_HP = PARAMS["unlearn"]["method_hp"]


# ------------------------------------------------------------------ losses computed by hand


def bernoulli(*probs: float, per_row: int = 1) -> Answers:
    """Answers whose every token has probability p of its target (two-word vocabulary), with
    `per_row` tokens per sequence: log p(y|x) = per_row * log p."""
    logits = torch.tensor([[math.log(p), math.log(1 - p)] for p in probs for _ in range(per_row)])
    rows = torch.arange(len(probs)).repeat_interleave(per_row)
    counts = torch.full((len(probs),), per_row)
    return Answers(logits, torch.zeros(len(logits), dtype=torch.long), rows, counts)


def kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


class FakeContext(Context):
    """The model's and the original's Answers per batch name: an objective that feeds a batch
    to the wrong place computes a different number."""

    def __init__(self, current: dict, original: dict, hp: dict):
        super().__init__(model=None, hp=hp)
        self.current, self.frozen = current, original

    def answers(self, batch, hidden_states=False):
        return self.current[batch["name"]]

    def original(self, batch, hidden_states=False):
        return self.frozen[batch["name"]]


STEP = Step(forget={"name": "forget"}, idk={"name": "idk"}, retain={"name": "retain"})
CURRENT = {
    "forget": bernoulli(0.5, 0.25),
    "idk": bernoulli(0.1, 0.2),
    "retain": bernoulli(0.8, 0.6),
}
ORIGINAL = {
    "forget": bernoulli(0.9, 0.7),
    "idk": bernoulli(0.05, 0.1),
    "retain": bernoulli(0.7, 0.9),
}
NLL = {k: [-math.log(p) for p in ps] for k, ps in
       {"forget": (0.5, 0.25), "idk": (0.1, 0.2), "retain": (0.8, 0.6)}.items()}  # fmt: skip


def mean(xs):
    return sum(xs) / len(xs)


def loss(method, hp=None, step=STEP, current=CURRENT, original=ORIGINAL):
    terms = METHODS[method].objective(FakeContext(current, original, hp or {}), step)
    return {k: float(v) for k, v in terms.items()}


def test_answers_logp_sums_and_nll_averages_tokens_by_hand():
    a = Answers(
        logits=torch.tensor([[0.0, 0.0], [0.0, 0.0], [math.log(3), 0.0]]),
        targets=torch.tensor([0, 1, 0]),
        rows=torch.tensor([0, 0, 1]),
        counts=torch.tensor([2, 1]),
    )
    assert a.logp().tolist() == pytest.approx([2 * math.log(0.5), math.log(0.75)])
    assert a.nll().tolist() == pytest.approx([math.log(2), -math.log(0.75)])


def test_token_kl_by_hand_and_its_direction():
    p, q = bernoulli(0.5), bernoulli(0.75)
    assert float(token_kl(p, q)[0]) == pytest.approx(0.5 * math.log(4 / 3))
    assert float(token_kl(q, p)[0]) == pytest.approx(kl(0.75, 0.5))


def test_retain_ft_ga_gd_idk_by_hand():
    assert loss("retain_ft") == pytest.approx({"retain": mean(NLL["retain"])})
    assert loss("ga") == pytest.approx({"forget": -mean(NLL["forget"])})
    assert loss("gd") == pytest.approx(
        {"forget": -mean(NLL["forget"]), "retain": mean(NLL["retain"])}
    )
    # IDK trains on the "I don't know" answers and the retain set, never on the true answers
    assert loss("idk") == pytest.approx({"idk": mean(NLL["idk"]), "retain": mean(NLL["retain"])})


def test_kl_is_forward_kl_to_the_original_on_retain():
    expected = mean([kl(0.8, 0.7), kl(0.6, 0.9)])  # KL(current || original)
    assert loss("kl") == pytest.approx({"forget": -mean(NLL["forget"]), "kl_retain": expected})


def test_dpo_compares_chosen_and_rejected_log_ratios_against_its_reference():
    hp = {"beta": 0.1, "lambda1": 1.0, "lambda2": 1.0}
    ref = {"idk": torch.tensor([-1.0, -2.0]), "forget": torch.tensor([-3.0, -1.5])}
    step = Step(**{k: {"name": k} for k in ("forget", "idk", "retain")}, reference=ref)
    chosen = [math.log(0.1) + 1.0, math.log(0.2) + 2.0]  # log pi(idk) - log ref(idk)
    rejected = [math.log(0.5) + 3.0, math.log(0.25) + 1.5]  # log pi(y) - log ref(y)
    dpo = mean(
        [
            -math.log(1 / (1 + math.exp(-0.1 * (c - r))))
            for c, r in zip(chosen, rejected, strict=True)
        ]
    )
    assert loss("dpo", hp, step) == pytest.approx({"idk": mean(NLL["idk"]), "dpo": dpo})
    # the reference really enters (the authors' code was NLL on the IDK answer alone): a
    # reference less sure of "I don't know" makes the model's IDK answers a bigger win
    names = {k: {"name": k} for k in ("forget", "idk", "retain")}
    doubting = Step(**names, reference={"idk": ref["idk"] - 5, "forget": ref["forget"]})
    assert loss("dpo", hp, doubting)["dpo"] < dpo - 0.1
    shifted = Step(**names, reference={k: v - 5 for k, v in ref.items()})
    assert loss("dpo", hp, shifted)["dpo"] == pytest.approx(dpo)  # only ratios count


def test_npo_uses_sequence_likelihoods():
    # three tokens per answer: log p(y|x) is the sum, so the ratio triples against one token
    current = {"forget": bernoulli(0.5, 0.25, per_row=3)}
    original = {"forget": bernoulli(0.9, 0.7, per_row=3)}
    beta = 0.5
    ratios = [3 * math.log(0.5 / 0.9), 3 * math.log(0.25 / 0.7)]
    expected = mean([(2 / beta) * math.log(1 + math.exp(beta * r)) for r in ratios])
    got = loss("npo", {"beta": beta}, current=current, original=original)
    assert got == pytest.approx({"forget": expected})


def test_simnpo_is_length_normalised_and_reference_free():
    hp = {"beta": 2.0, "delta": 0.5, "forget_weight": 0.25, "retain_weight": 1.0}
    current = {"forget": bernoulli(0.5, 0.25, per_row=3), "retain": CURRENT["retain"]}
    nll = [-math.log(0.5), -math.log(0.25)]  # per token: the length cancels
    forget = mean([-(2 / 2.0) * math.log(1 / (1 + math.exp(-2.0 * (n - 0.5)))) for n in nll])
    got = loss("simnpo", hp, current=current, original={})
    assert got == pytest.approx({"forget": 0.25 * forget, "retain": mean(NLL["retain"])})


def test_scrub_is_teacher_to_student_kl():
    hp = {"alpha": 2.0, "gamma": 3.0}
    expected = {
        "kl_retain": 2.0 * mean([kl(0.7, 0.8), kl(0.9, 0.6)]),  # KL(original || current)
        "kl_forget": -mean([kl(0.9, 0.5), kl(0.7, 0.25)]),
        "retain": 3.0 * mean(NLL["retain"]),
    }
    assert loss("scrub", hp) == pytest.approx(expected)


def test_llmu_ascends_forget_trains_idk_and_keeps_retain_by_forward_kl():
    hp = {"forget_weight": 1.0, "idk_weight": 0.5, "retain_weight": 2.0}
    expected = {
        "forget": -mean(NLL["forget"]),
        "idk": 0.5 * mean(NLL["idk"]),
        "kl_retain": 2.0 * mean([kl(0.8, 0.7), kl(0.6, 0.9)]),
    }
    assert loss("llmu", hp) == pytest.approx(expected)


def test_rmu_steers_forget_states_to_c_u_and_keeps_retain_states():
    from clearbench.unlearn.methods import rmu_direction

    hp = {"layer": 1, "c": 2.0, "alpha": 3.0, "seed": 0}
    u = rmu_direction(0, 2, "cpu")
    # one sequence of two positions, the second padding: it must not count
    h_forget = torch.tensor([[[1.0, 0.0], [9.0, 9.0]]])
    h_retain, h_kept = (
        torch.tensor([[[1.0, 1.0], [5.0, 5.0]]]),
        torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]),
    )

    def with_states(states):
        a = bernoulli(0.5)
        a.hidden_states = (None, states)
        return a

    mask = {"attention_mask": torch.tensor([[1, 0]])}
    step = Step(forget={"name": "forget", **mask}, idk={"name": "idk"},
                retain={"name": "retain", **mask})  # fmt: skip
    got = loss("rmu", hp, step, {"forget": with_states(h_forget), "retain": with_states(h_retain)},
               {"retain": with_states(h_kept)})  # fmt: skip
    forget = float(((torch.tensor([1.0, 0.0]) - 2.0 * u) ** 2).mean())
    assert got == pytest.approx({"forget": forget, "retain": 3.0 * 0.5})  # mean((1-0)^2, 0)


def test_every_registered_method_declares_its_params_section():
    trained = {name for name, d in DECLARED.items() if not d.edit}
    assert set(METHODS) == trained, "each declared method has its objective, and back"
    for name, method in METHODS.items():
        assert set(METHOD_HP[name]) == set(method.hp), name


# ------------------------------------------------------------------------ IDK answers


def test_idk_answers_are_data_and_drawn_per_sample_with_a_seed():
    answers = idk_answers()
    assert len(answers) >= 50 and len(set(answers)) == len(answers)
    draws = [idk_answer(0, f"q{i}") for i in range(200)]
    assert draws == [idk_answer(0, f"q{i}") for i in range(200)], "seeded"
    assert len(set(draws)) > 30, "spread over the phrasings"
    assert draws != [idk_answer(1, f"q{i}") for i in range(200)], "the seed matters"


# ------------------------------------------------------------ runs on a real tiny model


def hp(method, **kw):
    own = METHOD_HP[method] | ({"layer": 1} if method == "rmu" else {})  # the tiny model: 2 layers
    return {"method": method, "method_hp": own,
            "seed": 0, "max_len": 128, "epochs": 4, "lr": 5e-3, "weight_decay": 0.0,
            "batch_size": 4, "l1_lambda": 0.0, "lora": LORA} | kw  # fmt: skip


def mean_loss(model_dir, table):
    model, meta = load_model(model_dir)
    tok = load_tokenizer(meta["base"])
    df = read_qa(table)
    return float(
        answer_losses(model, tok, list(zip(df.question, df.answer, strict=True)), 128, 16).mean()
    )


@pytest.fixture(scope="module")
def track(text_data):
    return text_track(str(text_data / "forget10.parquet"), str(text_data / "retain90.parquet"))


@pytest.fixture(scope="module")
def reference(original_dir, track, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "ref"
    train_reference(str(original_dir), str(out), hp("dpo", epochs=6), track)
    return out


@pytest.fixture(scope="module")
def runs(original_dir, track, reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("unlearn")
    made = {}
    for name in [*METHODS, "ga_l1"]:
        method = name.removesuffix("_l1")
        kw = {"l1_lambda": 0.05} if name.endswith("_l1") else {}
        unlearn(str(original_dir), str(out / name), hp(method, **kw), track, str(reference))
        made[name] = out / name
    return made


def adapter_l1(run) -> float:
    from safetensors.torch import load_file

    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    return sum(float(w.abs().sum()) for n, w in weights.items() if "lora_B" in n)


def test_every_method_moves_the_model(runs, original_dir, text_data):
    forget = text_data / "forget10.parquet"
    before = mean_loss(original_dir, forget)
    for name in METHODS:
        assert read_model_json(runs[name])["status"] == "ok", name
        assert adapter_l1(runs[name]) > 0, f"{name} left its adapter at zero"
        assert abs(mean_loss(runs[name], forget) - before) > 1e-3, f"{name} left forget unchanged"


def test_ascent_methods_raise_the_forget_loss(runs, original_dir, text_data):
    forget = text_data / "forget10.parquet"
    before = mean_loss(original_dir, forget)
    for name in ("ga", "gd", "kl", "npo", "simnpo", "llmu", "idk", "dpo"):
        assert mean_loss(runs[name], forget) > before + 0.1, name


def test_gd_keeps_retain_better_than_ga(runs, text_data):
    retain = text_data / "retain90.parquet"
    assert mean_loss(runs["gd"], retain) < mean_loss(runs["ga"], retain)


def test_l1_shrinks_the_unlearning_adapter(runs):
    assert adapter_l1(runs["ga_l1"]) < adapter_l1(runs["ga"])


def test_every_run_logs_its_loss_terms_per_step(runs, track):
    steps = 4 * -(-len(track.forget) // 4)
    for name, run in runs.items():
        log = pd.read_csv(run / LOSSES)
        assert len(log) == steps, name
        terms = log.columns.drop(["step", "loss"])
        assert list(log["loss"]) == pytest.approx(list(log[terms].sum(axis=1))), name
    assert "l1" in pd.read_csv(runs["ga_l1"] / LOSSES).columns
    assert set(pd.read_csv(runs["dpo"] / LOSSES).columns) == {"step", "loss", "idk", "dpo"}


def test_every_run_records_chain_and_time(runs, original_dir):
    chain = read_model_json(original_dir)["adapters"]
    for run in runs.values():
        meta = read_model_json(run)
        assert meta["status"] == "ok" and meta["rte_seconds"] > 0
        assert meta["adapters"][: len(chain)] == chain and len(meta["adapters"]) == len(chain) + 1


@contextmanager
def method_for_this_test(name, objective):
    DECLARED[name] = Declared()
    register(name)(objective)
    try:
        yield
    finally:
        METHODS.pop(name), DECLARED.pop(name)


def test_idk_methods_train_on_idk_answers_never_the_true_ones(original_dir, track, tmp_path):
    seen = []

    def spy(ctx, step):
        seen.append(step)
        return {"idk": ctx.answers(step.idk).nll().mean()}

    with method_for_this_test("test_spy", spy):
        unlearn(str(original_dir), str(tmp_path / "spy"), hp("ga", epochs=1) | {"method": "test_spy"},
                track)  # fmt: skip
    tok = load_tokenizer(read_model_json(original_dir)["base"])
    phrasings, truths = set(idk_answers()), {s.answer for s in track.forget}
    for step in seen:
        for ids, labels in zip(step.idk["input_ids"], step.idk["labels"], strict=True):
            said = tok.decode(ids[labels != -100], skip_special_tokens=True).strip()
            assert said in phrasings and said not in truths


def test_dpo_reference_is_the_idk_tuned_model_not_the_original(reference, original_dir, track):
    hp_ = hp("dpo")
    ref, orig = (
        reference_logps(str(reference), track, hp_),
        reference_logps(str(original_dir), track, hp_),
    )
    assert (ref["idk"] > orig["idk"] + 1.0).all(), "the reference learned to say I don't know"
    with pytest.raises(ValueError, match="needs --reference"):
        unlearn(str(original_dir), "/tmp/never", hp("dpo"), track)


def test_dpo_with_a_diverged_reference_is_a_status_row(original_dir, track, tmp_path):
    import json

    ref = tmp_path / "ref"
    ref.mkdir()
    chain = read_model_json(original_dir)
    (ref / "model.json").write_text(json.dumps(chain | {"status": "diverged"}))
    result = unlearn(str(original_dir), str(tmp_path / "dpo"), hp("dpo"), track, str(ref))
    assert result["status"] == "diverged"
    meta = read_model_json(tmp_path / "dpo")
    assert meta["status"] == "diverged" and "reference" in meta["reason"]
    assert meta["adapters"] == chain["adapters"]


def test_nan_loss_marks_diverged_without_crash(original_dir, track, tmp_path):
    def nan_loss(ctx, step):
        return {"forget": ctx.answers(step.forget).nll().mean() * float("nan")}

    with method_for_this_test("test_nan", nan_loss):
        out = tmp_path / "nan"
        result = unlearn(str(original_dir), str(out), hp("ga") | {"method": "test_nan"}, track)
        assert result["status"] == "diverged"
        meta = read_model_json(out)
        assert meta["status"] == "diverged"
        assert meta["adapters"] == read_model_json(original_dir)["adapters"], "no NaN adapter kept"


def test_finite_loss_with_nan_gradient_is_diverged_not_a_nan_adapter(original_dir, track, tmp_path):
    def nan_gradient(ctx, step):
        nll = ctx.answers(step.forget).nll().mean()
        return {"forget": torch.sqrt(nll - nll.detach())}  # value 0, gradient 1/(2*sqrt(0))

    with method_for_this_test("test_nan_grad", nan_gradient):
        out = tmp_path / "nan_grad"
        result = unlearn(str(original_dir), str(out), hp("ga") | {"method": "test_nan_grad"}, track)
    assert result["status"] == "diverged"
    assert read_model_json(out)["adapters"] == read_model_json(original_dir)["adapters"]
    assert not (out / "adapter").exists()
    assert len(pd.read_csv(out / LOSSES)) == 1, "the log shows the step that diverged"


def test_unknown_method_is_one_line_error(original_dir, track, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        unlearn(str(original_dir), str(tmp_path / "x"), hp("ga") | {"method": "nope"}, track)


def test_huge_learning_rate_reaches_diverged_or_finishes(original_dir, track, tmp_path):
    # GA with an absurd step size must end as a status, never as an exception
    result = unlearn(str(original_dir), str(tmp_path / "big"), hp("ga", lr=1e4, epochs=3), track)
    assert result["status"] in {"ok", "diverged"}
