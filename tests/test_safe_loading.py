"""Safe loading: a file from a stranger runs no code unless params say it may.

Pickles (StyleGAN2 networks, torch files, object .npy arrays) are refused before any unpickling;
transformers checkpoints load with trust_remote_code off unless the model spec turns it on.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clearbench.data import backends
from clearbench.models import factory
from clearbench.vision import ensemble
from clearbench.vision import model as vm

ROOT = Path(__file__).resolve().parents[1]


class WritesFile:
    """Unpickling this opens (creates) `marker`: proof that the file's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_pickle(tmp_path: Path, name: str = "network.pkl") -> tuple[Path, Path]:
    marker = tmp_path / f"{name}.ran"
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"G_ema": WritesFile(marker), "D": WritesFile(marker)}))
    return path, marker


def assert_would_run(path: Path, marker: Path) -> None:
    """The test is meaningful: unpickling the file does create the marker."""
    nets = pickle.loads(path.read_bytes())  # noqa: S301 - our own hostile file, on purpose
    for handle in nets.values():
        handle.close()
    assert marker.exists()


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling fails the test, so a refusal cannot come from a failed pickle.load."""

    def refuse(*_, **__):
        raise AssertionError("unpickled a file the params did not trust")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


@pytest.mark.parametrize(
    "make",
    [
        lambda pkl: backends.StyleGAN2Generator(pkl),
        lambda pkl: backends.StyleGAN2Generator(pkl, trust_pickle=False),
        lambda pkl: backends.StyleGANFaces(
            network_pkl=pkl, age_direction="age.npy", glasses_direction="glasses.npy"
        ),
        lambda pkl: backends.StyleGANCelebs(64, network_pkl=pkl),
    ],
    ids=["generator-default", "generator-untrusted", "faces", "celebs"],
)
def test_untrusted_stylegan_pickle_is_refused_before_unpickling(tmp_path, make, monkeypatch):
    pkl, marker = hostile_pickle(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(pickle, "load", lambda *_: pytest.fail("unpickled an untrusted file"))
        m.setattr(pickle, "loads", lambda *_: pytest.fail("unpickled an untrusted file"))
        with pytest.raises(backends.BackendError) as err:
            make(str(pkl))
    msg = str(err.value)
    assert "\n" not in msg and f"refusing to load {pkl}" in msg and "trust_pickle: true" in msg
    assert not marker.exists()
    assert_would_run(pkl, marker)


def test_the_clear_data_step_does_not_trust_pickles_by_default(tmp_path, no_unpickling):
    """params.yaml and every shipped profile leave data.clear.stylegan2.trust_pickle off."""
    from clearbench.data.clear import DEFAULTS

    assert DEFAULTS["stylegan2"]["trust_pickle"] is False
    for profile in [ROOT / "params.yaml", *(ROOT / "config").glob("*.yaml")]:
        clear = (yaml.safe_load(profile.read_text()).get("data") or {}).get("clear") or {}
        assert (clear.get("stylegan2") or {}).get("trust_pickle", False) is False, profile.name


def test_latent_directions_are_plain_arrays(tmp_path, monkeypatch):
    """An object .npy is a pickle too: the directions load with allow_pickle=False."""
    monkeypatch.setattr(backends, "StyleGAN2Generator", lambda *_: None)
    monkeypatch.setattr(backends, "DeepFaceAttributes", lambda: None)
    marker = tmp_path / "npy.ran"
    hostile = tmp_path / "age.npy"
    np.save(hostile, np.array([WritesFile(marker)], dtype=object), allow_pickle=True)
    plain = tmp_path / "glasses.npy"
    np.save(plain, np.ones(4))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        backends.StyleGANFaces(network_pkl="x.pkl", age_direction=hostile, glasses_direction=plain)
    assert not marker.exists()
    faces = backends.StyleGANFaces(
        network_pkl="x.pkl", age_direction=plain, glasses_direction=plain
    )
    assert faces.age.shape == (4,)


def test_torch_files_load_weights_only(tmp_path, no_unpickling):
    """The vision head and the ensemble states are read with torch.load(weights_only=True): a
    torch file carrying an object is refused and its code does not run."""
    marker = tmp_path / "torch.ran"
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"classes": WritesFile(marker)}, folder / vm.HEAD_FILE)
    refused = (pickle.UnpicklingError, vm.ModelError)  # ModelError: names the file
    with pytest.raises(refused, match="Weights only load failed"):
        vm.load_model(folder)
    state = tmp_path / "state.pt"
    torch.save({"params": WritesFile(marker)}, state)
    with pytest.raises(refused, match="Weights only load failed"):
        ensemble.State.load(state)
    assert not marker.exists()


# ------------------------------------------------------------------ Hub / transformers checkpoints


def remote_code_checkpoint(tmp_path: Path, model_type: str = "llama") -> tuple[Path, Path]:
    """A tiny Llama checkpoint whose config asks for code shipped beside it (auto_map); importing
    that code creates a marker file."""
    folder = tmp_path / f"ckpt-{model_type}"
    tiny = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    model = factory.build_model({"config": tiny}, vocab_size=32)
    model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()  # save_pretrained writes safetensors
    marker = tmp_path / f"{model_type}.ran"
    # trusted, transformers imports this module and the marker appears (checked by hand: the
    # test does not trust it, as that would write into the user's HF_MODULES_CACHE)
    code = f"open({str(marker)!r}, 'w').close()\nimport transformers\nEvil = transformers.LlamaConfig\n"
    (folder / "evil.py").write_text(code)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.Evil", "AutoModelForCausalLM": "evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_checkpoint_code_does_not_run_without_trust(tmp_path):
    # a known model_type: loaded as transformers' own class, the shipped code ignored
    folder, marker = remote_code_checkpoint(tmp_path)
    model = factory.load_checkpoint(str(folder))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()
    # an unknown model_type needs the code: refused with one line
    folder, marker = remote_code_checkpoint(tmp_path, "evil_custom")
    with pytest.raises(factory.ModelError) as err:
        factory.build_model({"checkpoint": str(folder)})
    assert "\n" not in str(err.value) and str(folder) in str(err.value)
    assert not marker.exists()


class Recorder:
    """Stands in for an Auto class: records the trust_remote_code each load passes."""

    calls: list = []

    @classmethod
    def from_pretrained(cls, name, **kwargs):
        cls.calls.append((name, kwargs["trust_remote_code"]))
        return cls()

    vision_config = None
    pad_token = "<pad>"

    def eval(self):
        return self


@pytest.fixture
def recorded(monkeypatch):
    Recorder.calls = []
    import transformers

    for auto in ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"):
        monkeypatch.setattr(factory, auto, Recorder)
    # imported where it is used (only the vlm needs it): patched at its source
    monkeypatch.setattr(transformers, "AutoImageProcessor", Recorder)
    return Recorder.calls


def test_trust_remote_code_is_off_unless_params_turn_it_on(tmp_path, recorded):
    factory.build_model({"checkpoint": "org/model"})
    factory.load_tokenizer("org/model")
    factory.load_image_processor("org/model")
    assert recorded and all(trust is False for _, trust in recorded)
    recorded.clear()
    factory.build_model({"checkpoint": "org/model", "trust_remote_code": True})
    assert recorded and all(trust is True for _, trust in recorded)


def test_model_json_carries_the_trust_down_the_chain(tmp_path, recorded):
    from clearbench.train.text import finish_adapter_run

    plain, trusted = tmp_path / "plain", tmp_path / "trusted"
    factory.save_chain(plain, base="org/model", adapters=[])
    assert "trust_remote_code" not in json.loads((plain / factory.MODEL_JSON).read_text())
    factory.save_chain(trusted, base="org/model", adapters=[], trust_remote_code=True)
    # a run on the trusted base (here one that diverged) records the same trust
    derived = tmp_path / "derived"
    derived.mkdir()
    meta = factory.read_model_json(trusted)
    finish_adapter_run(derived, None, meta, "diverged", 0.0, [])
    assert factory.trusts_remote_code(factory.read_model_json(derived))
    for folder, trust in ((plain, False), (trusted, True), (derived, True)):
        recorded.clear()
        factory.load_model(folder, with_adapters=False)
        assert recorded and all(t is trust for _, t in recorded), folder.name


def test_params_accept_only_a_boolean_trust_remote_code():
    from clearbench.config import schema_errors

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for track in ("text", "vlm"):
        ok = copy.deepcopy(params)
        ok[track]["model"]["trust_remote_code"] = True
        assert not schema_errors(ok)
        bad = copy.deepcopy(params)
        bad[track]["model"]["trust_remote_code"] = "yes"
        errors = schema_errors(bad)
        assert errors and any(f"{track}.model.trust_remote_code" in e for e in errors), errors


def test_vision_checkpoint_code_never_runs(tmp_path):
    """The vision backbone always loads as transformers' ResNetModel: code a checkpoint ships
    (an auto_map in its config) is ignored, so vision.model has no trust_remote_code key."""
    config = dict(embedding_size=4, hidden_sizes=[4], depths=[1], num_channels=3)
    folder = tmp_path / "resnet"
    vm.build_backbone({"config": config}).save_pretrained(folder)
    marker = tmp_path / "resnet.ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.Evil", "AutoModel": "evil.Evil"}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert type(vm.build_backbone({"checkpoint": str(folder)})).__name__ == "ResNetModel"
    assert not marker.exists()
