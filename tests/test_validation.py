"""Every leaf of the parameters is validated before any job runs (issue 14, point 1): a table of
malformed overlays on params.yaml, each stopped by clearbench.config.check with one line that
names the full key path and what is wrong; a few of them through a real `snakemake -n`."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import pytest
import yaml

from clearbench.config import ConfigError, check, unlearn_stage_hp
from clearbench.unlearn.registry import DECLARED
from clearbench.vision.methods import METHODS as VISION_METHODS
from clearbench.vision.registry import HP as VISION_HP
from clearbench.vision.registry import declared
from tests.conftest import dry_run_with

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
METHODS = {name: declared.hp for name, declared in DECLARED.items()}
DELETE = object()  # the overlay removes this key

LANGUAGE = "dpo, ga, gd, idk, kl, llmu, npo, retain_ft, rmu, scrub, simnpo, unlink"
VISION = "dpo, grad_orth, llmu, neggrad, retain_ft, rmu, scrub, scrub_bio, sparsity, twins, unlink"
NEGGRAD_HP = "batch_size, epochs, forget_weight, lr, momentum, weight_decay"
PUBLISHED = {"faces": "parametric", "photos": "scenes", "source": "published"}

# (overlay: dotted key path -> value, the exact error after "params error at ")
CASES = [
    # wrong types in model configs, at every depth (the transformers config class rejects them)
    (
        {"vision.model.config.hidden_sizes": "not-a-list"},
        "vision.model.config.hidden_sizes: 'not-a-list' doesn't match any type in"
        " (list[int], tuple[int, ...], NoneType)",
    ),
    (
        {"vision.model.config.embedding_size": "abc"},
        "vision.model.config.embedding_size: expected int, got str (value: 'abc')",
    ),
    (
        {"text.model.config.tie_word_embeddings": "maybe"},
        "text.model.config.tie_word_embeddings: expected bool, got str (value: 'maybe')",
    ),
    (
        {"vlm.model.config.text_config.max_position_embeddings": "abc"},
        "vlm.model.config.text_config.max_position_embeddings: expected int, got str"
        " (value: 'abc')",
    ),
    (
        {"text.model.config.hidden_act": 3},
        "text.model.config.hidden_act: expected str, got int (value: 3)",
    ),
    (
        {"vlm.model.config.vision_config.patch_size": "big"},
        "vlm.model.config.vision_config.patch_size: 'big' doesn't match any type in"
        " (int, list[int], tuple[int, int], NoneType)",
    ),
    (
        {"vlm.model.config.vision_feature_layer": "last"},
        "vlm.model.config.vision_feature_layer: 'last' doesn't match any type in (int, list[int])",
    ),
    (
        {"vision.model.config.layer_type": "fancy"},
        "vision.model.config.layer_type: layer_type=fancy is not one of basic,bottleneck",
    ),
    # inconsistent or non-positive model sizes
    (
        {"vision.model.config.depths": [2, 2]},
        "vision.model.config.depths: 2 stages, but hidden_sizes has 4",
    ),
    (
        {"vision.model.config.embedding_size": 0},
        "vision.model.config.embedding_size: 0 must be at least 1",
    ),
    (
        {"vision.model.config.hidden_sizes": [16, -32, 64, 128]},
        "vision.model.config.hidden_sizes: [16, -32, 64, 128] must be at least 1",
    ),
    (
        {"vlm.model.config.text_config.intermediate_size": -1},
        "vlm.model.config.text_config.intermediate_size: -1 must be at least 1",
    ),
    (
        {"text.model.config.hidden_size": 130},
        "text.model.config: The hidden size (130) is not a multiple of the number of"
        " attention heads (4).",
    ),
    (
        {"vlm.model.config.text_config.num_attention_heads": 3},
        "vlm.model.config.text_config: The hidden size (64) is not a multiple of the number"
        " of attention heads (3).",
    ),
    (
        {"vlm.model.config.vision_config.patch_size": 128},
        "vlm.model.config.vision_config.patch_size: 128 is larger than image_size (64)",
    ),
    (
        {"text.model.config.num_hidden_layers": 0},
        "text.model.config.num_hidden_layers: 0 is less than the minimum of 1",
    ),
    (
        {"vision.model.embedding_dim": 0},
        "vision.model.embedding_dim: 0 is less than the minimum of 1",
    ),
    # unknown keys of model configs
    (
        {"vision.model.config.hidden_size": 16},
        "vision.model.config.hidden_size: unknown key (ResNetConfig has no such key)",
    ),
    (
        {"text.model.config.rope_theta_typo": 1.0},
        "text.model.config.rope_theta_typo: unknown key (LlamaConfig has no such key)",
    ),
    (
        {"vlm.model.config.vision_config.image_sise": 64},
        "vlm.model.config.vision_config.image_sise: unknown key (CLIPVisionConfig has no such key)",
    ),
    (
        {"vlm.model.config.projector": "mlp"},
        "vlm.model.config.projector: unknown key (LlavaConfig has no such key)",
    ),
    (
        {"text.model.config.vocab_size": 5},
        "text.model.config.vocab_size: unknown key (set by the pipeline)",
    ),
    # language methods' declared hyperparameters: type, range, unknown name
    (
        {"unlearn.method_hp.npo.beta": 0},
        "unlearn.method_hp.npo.beta: 0 is less than or equal to the minimum of 0",
    ),
    (
        {"unlearn.method_hp.scrub.alpha": -1.0},
        "unlearn.method_hp.scrub.alpha: -1.0 is less than the minimum of 0",
    ),
    (
        {"unlearn.method_hp.rmu.layer": 0},
        "unlearn.method_hp.rmu.layer: 0 is less than the minimum of 1",
    ),
    ({"unlearn.method_hp.rmu.seed": True}, "unlearn.method_hp.rmu.seed: True is not of type 'int'"),
    (
        {"text.unlearn.method_hp": {"dpo": {"beta": "high"}}},
        "text.unlearn.method_hp.dpo.beta: 'high' is not of type 'float'",
    ),
    (
        {"unlearn.method_hp.llmu.idk_wieght": 1.0},
        "unlearn.method_hp.llmu.idk_wieght: unknown hyperparameter"
        " (known: batch_size, epochs, forget_weight, idk_weight, lr, retain_weight, weight_decay)",
    ),
    (
        {"unlearn.method_hp.ga.lr": 0},
        "unlearn.method_hp.ga.lr: 0 is less than or equal to the minimum of 0",
    ),
    (
        {"unlearn.methods": ["ga", "forget_everything"]},
        f"unlearn.methods: unknown method 'forget_everything' (known: {LANGUAGE})",
    ),
    # vision methods' declared hyperparameters (their own and the optimizer overrides)
    (
        {"vision.unlearn.method_hp.scrub.alpha": "abc"},
        "vision.unlearn.method_hp.scrub.alpha: 'abc' is not of type 'float'",
    ),
    (
        {"vision.unlearn.method_hp.twins.distance": "cosine"},
        "vision.unlearn.method_hp.twins.distance: 'cosine' is not one of ['l2', 'kl']",
    ),
    (
        {"vision.unlearn.method_hp.twins.shift": 1.5},
        "vision.unlearn.method_hp.twins.shift: 1.5 is not of type 'int'",
    ),
    (
        {"vision.unlearn.method_hp.scrub.temperature": 0},
        "vision.unlearn.method_hp.scrub.temperature: 0 is less than or equal to the minimum of 0",
    ),
    (
        {"vision.unlearn.method_hp.neggrad.forget_wieght": 1.0},
        f"vision.unlearn.method_hp.neggrad.forget_wieght: unknown hyperparameter"
        f" (known: {NEGGRAD_HP})",
    ),
    (
        {"vision.unlearn.method_hp.rmu.lr": -0.1},
        "vision.unlearn.method_hp.rmu.lr: -0.1 is less than or equal to the minimum of 0",
    ),
    (
        {"vision.unlearn.method_hp.dpo.momentum": 2.0},
        "vision.unlearn.method_hp.dpo.momentum: 2.0 is greater than the maximum of 1",
    ),
    (
        {"vision.unlearn.method_hp.llmu.batch_size": 0},
        "vision.unlearn.method_hp.llmu.batch_size: 0 is less than the minimum of 1",
    ),
    (
        {"vision.methods": ["scrub", "salun"]},
        f"vision.methods: unknown vision method 'salun' (known: {VISION})",
    ),
    # the vision protocol's model count and chunks
    ({"vision.n_models": 12}, "vision.chunk: 16 does not divide vision.n_models (12)"),
    ({"vision.chunk": 6}, "vision.chunk: 6 does not divide vision.n_models (16)"),
    ({"vision.chunk": 0}, "vision.chunk: 0 is less than the minimum of 1"),
    ({"vision.n_models": 0}, "vision.n_models: 0 is less than the minimum of 4"),
    ({"vision.n_models": 10}, "vision.n_models: 10 is not a multiple of 4"),
    # forget splits: at least one author forgotten, at least one retained
    (
        {"data.forget_fractions.forget10": 0.99},
        "data.forget_fractions.forget10: 0.99 of 30 authors forgets 30, leaving no retain author",
    ),
    (
        {"data.text.n_authors": 4, "data.forget_fractions.forget10": 0.9},
        "data.forget_fractions.forget10: 0.9 of 4 authors forgets 4, leaving no retain author",
    ),
    (
        {"data.forget_fractions.forget10": 0.0},
        "data.forget_fractions.forget10: 0.0 is less than or equal to the minimum of 0",
    ),
    (
        {"data.forget_fractions.forget10": 1.5},
        "data.forget_fractions.forget10: 1.5 is greater than or equal to the maximum of 1",
    ),
    # unknown track and key names, wrong types of plain keys
    (
        {"tracks": ["text", "audio"]},
        "tracks.1: 'audio' is not one of ['text', 'vision', 'vlm', 'clip']",
    ),
    ({"tracks": "text"}, "tracks: 'text' is not of type 'array'"),
    # the clip track: its methods and their declared hyperparameters, its model
    (
        {"clip.methods": ["lipschitz", "salun"]},
        "clip.methods: unknown clip method 'salun' (known: amnesiac, emb, lipschitz, ulip, unlink)",
    ),
    (
        {"clip.method_hp.lipschitz.sigma": -1.0},
        "clip.method_hp.lipschitz.sigma: -1.0 is less than or equal to the minimum of 0",
    ),
    (
        {"clip.method_hp.unlink.variant": "fancy"},
        "clip.method_hp.unlink.variant: 'fancy' is not one of ['plain', 'entangled']",
    ),
    ({"clip.template": "a photo"}, "clip.template: 'a photo' does not match '\\\\{name\\\\}'"),
    (
        {"clip.model.config.vision_config.patch_size": 64},
        "clip.model.config.vision_config.patch_size: 64 is larger than image_size (32)",
    ),
    (
        {"unlearn.method_hp.unlink.variant": "fancy"},
        "unlearn.method_hp.unlink.variant: 'fancy' is not one of ['plain', 'entangled']",
    ),
    (
        {"unlearn.method_hp.unlink.lr": 0.1},
        "unlearn.method_hp.unlink.lr: unknown hyperparameter"
        " (known: energy, k, layers, max_rows, n_retain, n_samples, ridge, seed, variant)",
    ),
    (
        {"profil": "x"},
        "profil: unknown key (known: attacks, bootstrap, clip, compute, data, eval, profile, report, seed, text, tracks,"
        " unlearn, vision, vlm)",
    ),
    (
        {"text.base.epoch": 3},
        "text.base.epoch: unknown key (known: batch_size, epochs, lr, weight_decay)",
    ),
    (
        {"vision.unlearn.epoch": 3},
        "vision.unlearn.epoch: unknown key (known: batch_size, epochs, lr, method_hp, momentum,"
        " weight_decay)",
    ),
    (
        {"data.clear.stylegan2": {"network": "x.pkl"}},
        "data.clear.stylegan2.network: unknown key (known: age_direction, glasses_direction,"
        " network_pkl, stylegan_dir, trust_pickle)",
    ),
    ({"seed": "zero"}, "seed: 'zero' is not of type 'integer'"),
    ({"vision.train.lr": "0.1"}, "vision.train.lr: '0.1' is not of type 'number'"),
    (
        {"text.finetune.lora.target_modules": "q_proj"},
        "text.finetune.lora.target_modules: 'q_proj' is not of type 'array'",
    ),
    (
        {"vision.pretrain.test_fraction": 1.0},
        "vision.pretrain.test_fraction: 1.0 is greater than or equal to the maximum of 1",
    ),
    ({"vision.loss.s": 0}, "vision.loss.s: 0 is less than or equal to the minimum of 0"),
    ({"text.finetune.lora.r": 0}, "text.finetune.lora.r: 0 is less than the minimum of 1"),
    (
        {"compute.resources.eval.runtime": 0},
        "compute.resources.eval.runtime: 0 is less than the minimum of 1",
    ),
    # missing paths
    (
        {"data.text.source": "tofu", "data.text.tofu_dir": DELETE},
        "data.text.tofu_dir: missing (source tofu needs hub:locuslab/TOFU or a local folder)",
    ),
    (
        {"data.text.source": "tofu", "data.text.tofu_dir": "/no/such/tofu"},
        "data.text.tofu_dir: TOFU folder not found: /no/such/tofu",
    ),
    (
        {"text.model.checkpoint": "/no/such/model"},
        "text.model.checkpoint: checkpoint folder not found: /no/such/model",
    ),
    (
        {"vision.model.checkpoint": "./no/such/resnet"},
        f"vision.model.checkpoint: checkpoint folder not found: {ROOT}/no/such/resnet",
    ),
    (
        {"data.clear.backends": PUBLISHED, "data.clear.published": {"source": "./no-clear"}},
        f"data.clear.published.source: published CLEAR copy not found: {ROOT}/no-clear",
    ),
    (
        {"data.clear.backends": PUBLISHED},
        "data.clear.published.source: the published backend needs a source (a Hub id such as"
        " therem/CLEAR, or a local folder)",
    ),
    # the attacks (clearbench.attacks): only methods that run, known kinds, sane relearning
    (
        {"attacks.methods": ["ga", "kl"], "unlearn.methods": ["ga", "npo"]},
        "attacks.methods: 'kl' is not in unlearn.methods (only methods that run can be attacked)",
    ),
    (
        {"vision.attacks.methods": ["twins"], "vision.methods": ["retain_ft"]},
        "vision.attacks.methods: 'twins' is not in vision.methods (only methods that run can be"
        " attacked)",
    ),
    (
        {"attacks.kinds": ["relearn"]},
        "attacks.kinds.0: 'relearn' is not one of ['none', 'probe', 'q8', 'q4', 'relearn_forget',"
        " 'relearn_retain']",
    ),
    (
        {"attacks.relearn.forget_fraction": 1.0},
        "attacks.relearn.forget_fraction: 1.0 is greater than or equal to the maximum of 1",
    ),
    ({"eval.mink_k": 0}, "eval.mink_k: 0 is less than or equal to the minimum of 0"),
]


def overlay(changes: dict) -> dict:
    """params.yaml with each dotted key set (or removed)."""
    config = copy.deepcopy(PARAMS)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return config


def test_shipped_params_pass():
    check(PARAMS, METHODS, ROOT, declared())


def test_vision_declarations_match_the_functions():
    """Each vision method declares exactly its keyword hyperparameters, and its defaults pass."""
    from clearbench.vision.registry import EDITS

    assert set(VISION_METHODS) == set(VISION_HP) - set(EDITS)
    for name, fn in VISION_METHODS.items():
        defaults = {
            k: p.default for k, p in inspect.signature(fn).parameters.items() if k != "step"
        }
        assert set(defaults) == set(VISION_HP[name]), name
        assert all(VISION_HP[name][k].problem(v) is None for k, v in defaults.items()), name


def test_at_least_40_malformed_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("changes,message", CASES, ids=[" ".join(c) for c, _ in CASES])
def test_malformed_params_stop_with_one_line(changes, message):
    with pytest.raises(ConfigError) as err:
        check(overlay(changes), METHODS, ROOT, declared())
    assert str(err.value) == f"params error at {message}"


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "vision:\n  model:\n    config: {hidden_sizes: not-a-list}\n",
            "vision.model.config.hidden_sizes: 'not-a-list' doesn't match any type in"
            " (list[int], tuple[int, ...], NoneType)",
        ),
        (
            "vision:\n  unlearn:\n    method_hp:\n      scrub: {alpha: abc}\n",
            "vision.unlearn.method_hp.scrub.alpha: 'abc' is not of type 'float'",
        ),
        ("vision:\n  chunk: 6\n", "vision.chunk: 6 does not divide vision.n_models (16)"),
    ],
    ids=["model-config", "method-hp", "chunk"],
)
def test_snakemake_stops_before_any_job(tmp_path, text, message):
    work = tmp_path / "work"
    work.mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    run = dry_run_with(work, bad)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [f"error: params error at {message}"]
    assert "Traceback" not in run.stdout + run.stderr
    assert not {"data", "results", "logs"} & {p.name for p in work.iterdir()}


def test_a_methods_own_learning_rate_reaches_its_jobs_alone():
    config = overlay({"unlearn.method_hp.ga.lr": 5e-4, "unlearn.method_hp.ga.epochs": 2})
    check(config, METHODS, ROOT, declared())
    ga = unlearn_stage_hp(config, "text", "ga", False)
    assert (ga["lr"], ga["epochs"]) == (5e-4, 2) and "lr" not in ga["method_hp"]
    gd = unlearn_stage_hp(config, "text", "gd", False)
    assert gd == unlearn_stage_hp(PARAMS, "text", "gd", False), "other methods keep the track's"
