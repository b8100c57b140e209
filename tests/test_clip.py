"""The clip track: model conventions, checkpoint loading, data splits, training, CLI, table."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clearbench.cli import main as cli_main
from clearbench.clip import model as cm
from clearbench.clip.data import load_clip_data, split_photos
from clearbench.clip.report import build_table
from clearbench.models.factory import ModelError, load_checkpoint

SMALL = dict(
    vision_config=dict(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
    ),  # fmt: skip
    text_config=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
    ),  # fmt: skip
    projection_dim=32,
)
HP = dict(
    image_size=16,
    vocab_size=300,
    model=dict(config=SMALL),
    train=dict(epochs=40, batch_size=16, lr=3e-3, weight_decay=0.01, augment=False),
)
N_AUTHORS, N_CELEBS, TARGET = 8, 4, (6, 7)


def photo(identity: int, rng) -> bytes:
    """A 16x16 PNG: the identity's colour in a square at its own place, on a noisy background."""
    hue = np.array([(identity * 97) % 256, (identity * 53 + 80) % 256, (identity * 151) % 256])
    img = rng.integers(0, 90, (16, 16, 3))
    r, c = 2 + 4 * (identity % 3), 2 + 4 * ((identity // 3) % 3)
    img[r : r + 6, c : c + 6] = hue + rng.integers(-15, 16, 3)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def clear_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clear")
    rng = np.random.default_rng(0)
    rows = [dict(sample_id=f"a{a:02d}_{k:02d}", author_id=a, name=f"Author {chr(65 + a)}son",
                 image={"bytes": photo(a, rng), "path": None})
            for a in range(N_AUTHORS) for k in range(10)]  # fmt: skip
    full = pd.DataFrame(rows)
    full.to_parquet(d / "full.parquet")
    full[full.author_id.isin(TARGET)].to_parquet(d / "forget.parquet")
    celebs = [dict(sample_id=f"rf{c}_{k}", celeb_id=c, name=f"Famous {chr(80 + c)}ez",
                   image={"bytes": photo(N_AUTHORS + c, rng), "path": None})
              for c in range(N_CELEBS) for k in range(5)]  # fmt: skip
    pd.DataFrame(celebs).to_parquet(d / "real_faces.parquet")
    return d


def data_args(d) -> list[str]:
    return ["--full", str(d / "full.parquet"), "--real-faces", str(d / "real_faces.parquet"),
            "--split", str(d / "forget.parquet")]  # fmt: skip


def tiny(seed=0):
    tok = cm.train_clip_tokenizer(cm.prompts([f"Name {i}" for i in range(30)]), 300)
    return cm.build_clip({"config": SMALL}, tok, seed)


def test_text_pooled_at_the_end_token():
    model, tok = tiny()
    assert tok.eos_token_id == model.config.text_config.eos_token_id != 2  # not the legacy path
    inputs = cm.encode_text(model, tok, ["a photo of Name 1", "a photo of Name 12 and more"])
    ids = inputs["input_ids"]
    eos_pos = (ids == tok.eos_token_id).int().argmax(-1)
    assert (ids[:, 0] == tok.bos_token_id).all() and (ids[0, eos_pos[0] + 1 :] == 0).all()
    assert not torch.equal(eos_pos, ids.argmax(-1)), "legacy argmax pooling would agree"
    out = model.text_model(**inputs)
    expected = out.last_hidden_state[torch.arange(2), eos_pos]
    assert torch.allclose(out.pooler_output, expected)
    # truncation keeps the end token
    long = cm.encode_text(model, tok, ["Name 1 " * 40])["input_ids"][0]
    assert len(long) == 16 and long[-1] == tok.eos_token_id


def test_checkpoint_round_trip_offline(tmp_path):
    model, tok = tiny(seed=3)
    model.save_pretrained(tmp_path / "ckpt")  # how a Hub CLIP checkpoint looks on disk
    tok.save_pretrained(tmp_path / "ckpt")
    assert type(load_checkpoint(str(tmp_path / "ckpt"))).__name__ == "CLIPModel"
    again, tok2 = cm.build_clip({"checkpoint": str(tmp_path / "ckpt")})
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    text = cm.encode_text(again, tok2, ["a photo of Name 3"])
    assert torch.equal(
        text["input_ids"], cm.encode_text(model, tok, ["a photo of Name 3"])["input_ids"]
    )
    assert torch.allclose(cm.image_embeddings(model, pixels), cm.image_embeddings(again, pixels))
    assert torch.allclose(cm.text_embeddings(model, text), cm.text_embeddings(again, text))
    # save_clip / load_clip keep the pixel convention and the metadata
    cm.save_clip(model, tok, tmp_path / "m", status="ok", rte_seconds=1.5)
    loaded, _, meta = cm.load_clip(tmp_path / "m")
    assert meta["status"] == "ok" and meta["image_mean"] == [0.5] * 3
    u8 = np.full((1, 16, 16, 3), 255, np.uint8)
    assert torch.allclose(cm.to_pixels(u8, loaded), torch.ones(1, 3, 16, 16))
    assert cm.pixel_range(loaded) == (-1.0, 1.0)
    with pytest.raises(ModelError, match="not a clip model folder") as err:
        cm.load_clip(tmp_path / "nope")
    assert "\n" not in str(err.value)


def test_split_is_seeded_and_groups_assigned(clear_dir):
    a = load_clip_data(*[clear_dir / f for f in ("full.parquet", "real_faces.parquet",
                                                 "forget.parquet")], image_size=16)  # fmt: skip
    b = load_clip_data(*[clear_dir / f for f in ("full.parquet", "real_faces.parquet",
                                                 "forget.parquet")], image_size=16)  # fmt: skip
    assert np.array_equal(a.train, b.train) and a.pixels.shape == (100, 16, 16, 3)
    assert a.groups == ["other"] * 6 + ["target"] * 2 + ["real_faces"] * 4
    assert a.names[0] == "Author Ason" and a.names[8] == "Famous Pez"
    for c in range(a.n_identities):
        mine = a.train[a.labels == c]
        assert 1 <= (~mine).sum() and 1 <= mine.sum()
        assert (~mine).sum() == (3 if c < N_AUTHORS else 1)  # floor(n * 0.3)
    other = split_photos(a.labels, 0.3, seed=1)
    assert not np.array_equal(other, a.train)


@pytest.fixture(scope="module")
def trained(clear_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    for name, gold in (("original", []), ("gold", ["--gold"])):
        rc = cli_main(["clip", "train", *data_args(clear_dir), "--hp", json.dumps(HP), *gold,
                       "--out", str(out / name), "--eval", str(out / f"{name}.parquet"),
                       "--summary", str(out / f"{name}.json")])  # fmt: skip
        assert rc == 0
    return out


def test_training_learns_names_and_gold_forgets_target(trained):
    orig = json.loads((trained / "original.json").read_text())
    gold = json.loads((trained / "gold.json").read_text())
    chance = 1 / (N_AUTHORS + N_CELEBS)
    assert orig["status"] == "ok" and orig["rte_seconds"] > 0
    assert orig["other_acc"] >= 0.6 and orig["target_acc"] >= 0.6, orig
    assert orig["real_faces_acc"] > 3 * chance, orig
    assert gold["target_acc"] < orig["target_acc"] - 0.3, (orig, gold)
    df = pd.read_parquet(trained / "original.parquet")
    assert {"sample_id", "identity", "group", "label", "pred", "correct", "p_true"} <= set(df)
    assert len(df) == 6 * 3 + 2 * 3 + 4 and df["p_true"].between(0, 1).all()
    assert json.loads((trained / "original" / "model.json").read_text())["status"] == "ok"


def fake_methods(monkeypatch, fn):
    mod = types.ModuleType("clearbench.clip.methods")
    mod.unlearn_clip = fn
    monkeypatch.setitem(sys.modules, "clearbench.clip.methods", mod)
    monkeypatch.setattr("clearbench.clip.methods", mod, raising=False)


def unlearn(clear_dir, trained, name) -> tuple[int, dict]:
    rc = cli_main(["clip", "unlearn", *data_args(clear_dir), "--hp", json.dumps(HP),
                   "--original", str(trained / "original"), "--method", name,
                   "--out", str(trained / name), "--eval", str(trained / f"{name}.parquet"),
                   "--summary", str(trained / f"{name}.json")])  # fmt: skip
    s = json.loads((trained / f"{name}.json").read_text()) if rc == 0 else {}
    return rc, s


def test_unlearn_with_stand_in_method(clear_dir, trained, monkeypatch):
    seen = {}

    def scramble(model, task, method, hp, seed):
        seen.update(target=task.target, n=len(task.forget_pixels), shape=task.image_shape,
                    rng=task.pixel_range, c=len(task.text_inputs["input_ids"]))  # fmt: skip
        with torch.no_grad():  # forget everything: a random image projection
            model.visual_projection.weight.normal_(generator=torch.Generator().manual_seed(seed))
        return {"steps": 3, "loss": torch.tensor(0.5)}

    fake_methods(monkeypatch, scramble)
    rc, s = unlearn(clear_dir, trained, "scramble")
    assert rc == 0 and s["status"] == "ok" and s["info"] == {"steps": 3, "loss": 0.5}
    assert seen == dict(target=[6, 7], n=14, shape=(3, 16, 16), rng=(-1.0, 1.0), c=12)
    assert s["rte_seconds"] >= 0 and s["target_acc"] <= 0.5

    def explode(model, task, method, hp, seed):
        raise FloatingPointError("loss is nan")

    fake_methods(monkeypatch, explode)
    rc, s = unlearn(clear_dir, trained, "explode")
    assert rc == 0 and s["status"] == "diverged" and (trained / "explode" / "model.json").exists()


def test_table_content(tmp_path):
    sums = {"original": (0.9, 0.8, 0.7, "ok"), "gold": (0.1, 0.8, 0.7, "ok"),
            "lip": (0.2, 0.6, 0.65, "ok"), "bad": (None, None, None, "diverged")}  # fmt: skip
    args = []
    for name, (t, o, r, status) in sums.items():
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(dict(target_acc=t, other_acc=o, real_faces_acc=r,
                                     rte_seconds=1.0, status=status)))  # fmt: skip
        args.append(f"{name}={p}")
    out = [str(tmp_path / f"t.{x}") for x in ("csv", "md", "png")]
    code = ("import sys; from clearbench.cli import main; rc = main(['clip', 'table', "
            f"'--summaries', *{args!r}, '--out-csv', {out[0]!r}, '--out-md', {out[1]!r}, "
            f"'--out-png', {out[2]!r}]); assert 'torch' not in sys.modules; sys.exit(rc)")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
    df = pd.read_csv(out[0])
    assert list(df["model"]) == ["original", "gold", "lip", "bad"]
    lip = df.set_index("model").loc["lip"]
    assert (lip.target_acc_before, lip.target_acc_after, lip.other_acc_after) == (0.9, 0.2, 0.6)
    md = open(out[1]).read()
    assert md.startswith("*CLIP track") and "| lip | 0.900 | 0.200 |" in md and "diverged" in md
    assert open(out[2], "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="'original'"):
        build_table({"gold": {"target_acc": 0, "other_acc": 0, "real_faces_acc": 0}})


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hp", "{not json"], "--hp is not valid JSON"),
        (["--hp", '{"train": {"epochs": 0}}'], "train.epochs must be a positive integer"),
        (["--hp", '{"bogus": 1}'], "unknown key(s) bogus"),
    ],
)
def test_bad_hp_is_one_line(clear_dir, tmp_path, capsys, extra, message):
    rc = cli_main(["clip", "train", *data_args(clear_dir), "--out", str(tmp_path / "m"),
                   "--eval", str(tmp_path / "e.parquet"), "--summary", str(tmp_path / "s.json"),
                   *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: clip: ") and message in err and err.count("\n") == 1


def test_missing_inputs_are_one_line(tmp_path, capsys):
    rc = cli_main(["clip", "train", "--full", str(tmp_path / "none.parquet"), "--real-faces", "x",
                   "--split", "y", "--out", str(tmp_path / "m"), "--eval", "e", "--summary", "s"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "error: clip: --full: no such file" in err and err.count("\n") == 1
    rc = cli_main(["clip", "table", "--summaries", f"original={tmp_path / 'no.json'}",
                   "--out-csv", "a", "--out-md", "b", "--out-png", "c"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "no such summary file" in err and err.count("\n") == 1
