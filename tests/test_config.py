"""Bad parameters stop before any job runs, with one line naming the key or path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from clearbench.config import ConfigError, check
from clearbench.unlearn.registry import DECLARED as LANGUAGE_METHODS
from clearbench.vision.registry import HP as VISION_METHODS
from tests.conftest import dry_run_with

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
METHODS = {name: method.hp for name, method in LANGUAGE_METHODS.items()}


def with_change(path: str, value):
    config = copy.deepcopy(PARAMS)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


def test_shipped_profiles_are_valid():
    check(PARAMS, METHODS, ROOT, list(VISION_METHODS))
    for overlay in (ROOT / "config").glob("*.yaml"):
        merged = copy.deepcopy(PARAMS)
        _merge(merged, yaml.safe_load(overlay.read_text()))
        check(merged, METHODS, ROOT, list(VISION_METHODS))


def test_shipped_profiles_name_no_folder_outside_the_clone():
    """A fresh clone has nothing beside it: every path a shipped profile names is a Hub id
    (`hub:...`, `owner/name`) or lies inside the project (CI overlays its local copies)."""
    for profile in [ROOT / "params.yaml", *(ROOT / "config").glob("*.yaml")]:
        text = profile.read_text()
        assert "../" not in text, f"{profile.name} names a path outside the clone"
        merged = copy.deepcopy(PARAMS)
        _merge(merged, yaml.safe_load(text))
        assert merged["data"]["text"]["tofu_dir"].startswith("hub:"), profile.name


def test_layered_paper_profiles_are_valid():
    # the paper's second text model: config/paper-mistral.yaml on top of config/paper.yaml
    merged = copy.deepcopy(PARAMS)
    for overlay in ("paper.yaml", "paper-mistral.yaml"):
        _merge(merged, yaml.safe_load((ROOT / "config" / overlay).read_text()))
    check(merged, METHODS, ROOT, list(VISION_METHODS))
    assert merged["text"]["model"]["checkpoint"] == "mistralai/Mistral-7B-v0.1"


def _merge(base, overlay):
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


@pytest.mark.parametrize(
    "path,value,needle",
    [
        ("text.finetune.lr", "fast", "text.finetune.lr: 'fast' is not of type 'number'"),
        ("data.text.n_authors", -3, "data.text.n_authors: -3 is less than the minimum"),
        ("eval.max_new_tokens", 0, "eval.max_new_tokens"),
        ("unlearn.methods", ["ga", "bogus"], "unknown method 'bogus'"),
        ("data.splits", ["forget33"], "'forget33' is not a key of data.forget_fractions"),
        ("text.model", {"config": {"hidden_size": 8}}, "text.model.config"),
        ("seed", 1.5, "seed: 1.5 is not of type 'integer'"),
        ("vision.n_models", 6, "vision.n_models: 6 is not a multiple of 4"),
        ("vision.methods", ["scrub", "forget_all"], "vision.methods: unknown vision method"),
        ("vision.unlearn.method_hp", {"scrubb": {}}, "vision.unlearn.method_hp: unknown vision"),
        ("vision.loss", {"kind": "triplet"}, "vision.loss.kind"),
        ("data.clear.build", False, "the vision track needs the CLEAR photos"),
        ("vlm.finetune.freeze_vision_tower", "yes", "vlm.finetune.freeze_vision_tower"),
        ("vlm.model", {"config": {"text_config": {}}}, "vlm.model.config"),
        (
            "unlearn.method_hp.dpo.beta",
            "abc",
            "unlearn.method_hp.dpo.beta: 'abc' is not of type 'float'",
        ),
        (
            "unlearn.method_hp.rmu.layer",
            1.5,
            "unlearn.method_hp.rmu.layer: 1.5 is not of type 'int'",
        ),
        ("unlearn.method_hp.npo", {}, "unlearn.method_hp.npo: missing 'beta' (float)"),
        (
            "unlearn.method_hp.scrub",
            {"alpha": 1.0, "gamma": 1.0, "temp": 2.0},
            "unlearn.method_hp.scrub.temp: unknown hyperparameter (known: alpha, batch_size, epochs,"
            " gamma, lr, weight_decay)",
        ),
        ("unlearn.method_hp.scrubb", {}, "unlearn.method_hp: unknown method 'scrubb'"),
        (
            "vlm.unlearn.method_hp",
            {"rmu": {"layer": "two"}},
            "vlm.unlearn.method_hp.rmu.layer: 'two' is not of type 'int'",
        ),
        (
            "unlearn.modality_study.methods",
            ["llmu", "nope"],
            "unlearn.modality_study.methods: unknown method 'nope'",
        ),
        ("unlearn.modalities", ["audio"], "unlearn.modalities.0"),
        ("text.unlearn.reference", {"epochs": 0, "lr": 1e-3}, "text.unlearn.reference.epochs"),
        ("report.real_drop", 2, "report.real_drop"),
        (
            "compute.resources.unlearn.mem_mb",
            -1,
            "compute.resources.unlearn.mem_mb: -1 is less than the minimum of 0",
        ),
        (
            "compute.gpu",
            1,
            "compute.gpu: unknown key (known: device, dtype, gradient_checkpointing",
        ),
    ],
)
def test_bad_value_names_the_key(path, value, needle):
    with pytest.raises(ConfigError) as err:
        check(with_change(path, value), METHODS, ROOT, list(VISION_METHODS))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_is_rejected():
    config = with_change("eval.max_sample", 3)  # typo of max_samples
    with pytest.raises(ConfigError, match="max_sample"):
        check(config, METHODS, ROOT)


def test_missing_tofu_folder_names_the_path(tmp_path):
    config = with_change("data.text", {**PARAMS["data"]["text"], "source": "tofu",
                                       "tofu_dir": str(tmp_path / "nope")})  # fmt: skip
    with pytest.raises(ConfigError, match=f"TOFU folder not found: {tmp_path / 'nope'}"):
        check(config, METHODS, ROOT)


def test_snakemake_stops_before_any_job(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("unlearn:\n  methods: [ga, bogus]\n")
    run = dry_run_with(tmp_path, overlay, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        "error: params error at unlearn.methods: unknown method 'bogus' (known: "
        + ", ".join(sorted(METHODS))
        + ")"
    ]
    assert "Traceback" not in run.stdout + run.stderr
    assert "Job stats" not in run.stdout
