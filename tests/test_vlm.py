"""VLM track: tiny LLaVA factory, frozen vision tower, answer-only scoring, image-conditioned
generation and the per-sample eval table, on tiny tables built here (no data/ needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from clearbench.config import vlm_stage_hp
from clearbench.data.clear import SCHEMAS, png, write_parquet
from clearbench.data.text import read_qa
from clearbench.eval.text import EVAL_SCHEMA
from clearbench.eval.vlm import TASKS, answer_losses, evaluate_vlm
from clearbench.models.factory import (
    ModelError,
    build_model,
    load_image_processor,
    load_model,
    load_tokenizer,
)
from clearbench.models.tokenizer import train_tokenizer
from clearbench.train import vlm as V
from clearbench.train.vqa import IMAGE_TOKEN, Sample, Vision

ROOT = Path(__file__).resolve().parents[1]
TINY_VLM = {
    "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32,
                      "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "max_position_embeddings": 128,
                    "tie_word_embeddings": True},
    "vision_feature_layer": -1,
}  # fmt: skip
VLM_PARAMS = {"seed": 0, **yaml.safe_load((ROOT / "params.yaml").read_text())["vlm"]}
LORA = VLM_PARAMS["finetune"]["lora"] | {"r": 4, "alpha": 8}
FINETUNE = {"seed": 0, "max_len": 64, "epochs": 2, "lr": 5e-3, "batch_size": 16,
            "weight_decay": 0.0, "replay": True, "freeze_vision_tower": True, "lora": LORA}  # fmt: skip
EVAL = {"seed": 0, "max_len": 64, "max_samples": 0, "max_new_tokens": 8, "batch_size": 32}


def square(colour, seed: int) -> bytes:
    """A 64x64 PNG: one colour per person plus noise, so photos of one person differ."""
    noise = np.random.default_rng(seed).integers(-20, 20, (64, 64, 3))
    return png(np.clip(np.array(colour) + noise, 0, 255))["bytes"]


@pytest.fixture(scope="module")
def clear_data(text_data, tmp_path_factory):
    """CLEAR-shaped tables for the tiny text dataset: one photo per QA, coloured by author."""
    out = tmp_path_factory.mktemp("clear")
    full = read_qa(text_data / "full.parquet")
    colours = np.random.default_rng(0).integers(30, 225, (full["author_id"].max() + 1, 3))
    photos = {
        r.sample_id: {"sample_id": r.sample_id, "author_id": r.author_id, "name": r.author,
                      "question": r.question, "answer": r.answer, "prompt": "", "caption": "",
                      "image": {"bytes": square(colours[r.author_id], i), "path": None}}
        for i, r in enumerate(full.itertuples())
    }  # fmt: skip
    for table in ("full", "forget10", "retain90", "retain_eval"):
        ids = read_qa(text_data / f"{table}.parquet")["sample_id"]
        write_parquet([photos[s] for s in ids], SCHEMAS["photos"], out / f"{table}.parquet")
    celebs = ["Ana Silva", "Bo Chen", "Cy Twombly"]
    faces = [
        {"sample_id": f"rf{c}_{k}", "celeb_id": c, "name": name,
         "question": "Who is the person in the image?", "answer": name,
         "perturbed_answers": [n for n in celebs if n != name],
         "image": {"bytes": square(colours[c] // 2, 100 + 2 * c + k), "path": None}}
        for c, name in enumerate(celebs) for k in range(2)
    ]  # fmt: skip
    write_parquet(faces, SCHEMAS["real_faces"], out / "real_faces.parquet")
    world = [
        {"sample_id": f"rw{i}", "question": "What colour is the ball?", "answer": col,
         "perturbed_answers": [c for c in ("red", "green", "blue") if c != col],
         "image": {"bytes": square(rgb, 200 + i), "path": None}}
        for i, (col, rgb) in enumerate([("red", (220, 0, 0)), ("green", (0, 200, 0)),
                                        ("blue", (0, 0, 220))])
    ]  # fmt: skip
    write_parquet(world, SCHEMAS["real_world"], out / "real_world.parquet")
    return out


@pytest.fixture(scope="module")
def vlm_base(clear_data, text_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm") / "base"
    hp = {"seed": 0, "max_len": 64, "vocab_size": 400, "model": {"config": TINY_VLM},
          "epochs": 3, "lr": 3e-3, "batch_size": 16, "weight_decay": 0.0}  # fmt: skip
    V.pretrain_vlm_base(str(clear_data), str(text_data), str(out), hp)
    return out


@pytest.fixture(scope="module")
def vlm_original(vlm_base, clear_data, text_data):
    out = vlm_base.parent / "original"
    V.finetune_vlm(str(vlm_base), str(clear_data), str(text_data), "full", str(out), FINETUNE)
    return out


def vision_of(model_dir):
    model, meta = load_model(model_dir)
    tok, proc = load_tokenizer(meta["base"]), load_image_processor(meta["base"])
    return model, Vision(tok, proc, model.config)


def tower_state(model) -> dict:
    return {k: v.clone() for k, v in V.vision_tower(model).state_dict().items()}


# --------------------------------------------------------------------------------- (a)


def test_factory_builds_tiny_llava_and_loads_it_back_by_path(tmp_path):
    from transformers import LlavaForConditionalGeneration

    model = build_model({"config": TINY_VLM}, vocab_size=300, seed=1, image_token_id=299)
    assert isinstance(model, LlavaForConditionalGeneration)
    assert model.config.image_seq_length == (32 // 8) ** 2
    model.save_pretrained(tmp_path)
    again = build_model({"checkpoint": str(tmp_path)})  # offline, as the paper profile loads
    ids = torch.tensor([[5, 6] + [299] * 16 + [7, 8, 9]])
    pixels = torch.randn(1, 3, 32, 32)
    model.eval()
    logits = [m(ids, pixel_values=pixels).logits for m in (model, again)]
    assert torch.equal(*logits)
    with pytest.raises(ModelError, match="image"):
        build_model({"config": TINY_VLM}, vocab_size=300)


def test_base_folder_is_a_loadable_chain_with_tokenizer_and_processor(vlm_base, tmp_path):
    model, vision = vision_of(vlm_base)
    assert vision.tok.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
    assert vision.pixels(square((10, 20, 30), 0)).shape == (3, 32, 32)  # resized from 64
    # a checkpoint spec records the checkpoint and trains nothing
    summary = V.pretrain_vlm_base("unused", "unused", str(tmp_path / "ck"),
                                  vlm_stage_hp("base", VLM_PARAMS) | {"model": {"checkpoint": str(vlm_base)}})  # fmt: skip
    assert summary == {"trained": False}
    assert load_model(tmp_path / "ck")[1]["base"] == str(vlm_base)


def test_bad_input_is_one_line_naming_the_key_or_file(vlm_base, clear_data, text_data, tmp_path):
    hp = dict(FINETUNE)
    del hp["lr"]
    with pytest.raises(ValueError, match="'lr'"):
        V.finetune_vlm(str(vlm_base), str(clear_data), str(text_data), "full", str(tmp_path), hp)
    with pytest.raises(ValueError, match="freeze_vision_tower"):  # "false" is not False
        V.finetune_vlm(str(vlm_base), str(clear_data), str(text_data), "full", str(tmp_path),
                       FINETUNE | {"freeze_vision_tower": "false"})  # fmt: skip
    with pytest.raises(ValueError, match="retain80.parquet"):  # forget20 was never split off
        V.finetune_vlm(str(vlm_base), str(clear_data), str(text_data), "forget20", str(tmp_path),
                       FINETUNE)  # fmt: skip


# --------------------------------------------------------------------------------- (b)


def test_frozen_tower_does_not_move_and_an_unfrozen_one_does(
    vlm_base, vlm_original, clear_data, text_data
):
    base = tower_state(load_model(vlm_base)[0])
    frozen = tower_state(load_model(vlm_original)[0])  # adapters merged
    assert all(torch.equal(base[k], frozen[k]) for k in base), "frozen tower moved"

    out = vlm_base.parent / "unfrozen"
    hp = FINETUNE | {"freeze_vision_tower": False, "epochs": 1}
    V.finetune_vlm(str(vlm_base), str(clear_data), str(text_data), "full", str(out), hp)
    unfrozen = tower_state(load_model(out)[0])
    assert any(not torch.equal(base[k], unfrozen[k]) for k in base), "unfrozen tower did not move"


# --------------------------------------------------------------------------------- (c)


def test_image_tokens_are_never_scored(vlm_base):
    model, vision = vision_of(vlm_base)
    sample = Sample("Who is this person?", "Ana Silva", square((200, 10, 10), 0))
    ids, labels = vision.encode(sample, max_len=64)
    image = [i for i, t in enumerate(ids) if t == model.config.image_token_id]
    assert len(image) == model.config.image_seq_length
    assert all(labels[i] == -100 for i in image)
    tok = vision.tok
    answer = tok(" Ana Silva", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert [t for t in labels if t != -100] == answer

    # gt_loss by hand: mean NLL of the answer tokens, each predicted from its prefix
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]),
                       pixel_values=vision.pixels(sample.image)[None]).logits[0]  # fmt: skip
    start = len(ids) - len(answer)
    logp = torch.log_softmax(logits.double(), -1)
    by_hand = -np.mean([logp[start + j - 1, t].item() for j, t in enumerate(answer)])
    got = answer_losses(model, vision, [sample], max_len=64, batch_size=4)[0]
    assert got == pytest.approx(by_hand, abs=1e-5)
    # Min-K%++ (eval's gt_minkpp): one score per answer token, none for image tokens
    from clearbench.eval.vlm import answer_scores

    p, pos = logp.exp(), [start + j - 1 for j in range(len(answer))]
    mu = (p * logp).sum(-1)
    sigma = ((p * logp**2).sum(-1) - mu**2).sqrt()
    minkpp = [((logp[i, t] - mu[i]) / sigma[i]).item() for i, t in zip(pos, answer, strict=True)]
    losses, scores = answer_scores(model, vision, [sample, sample], 64, 4, minkpp_for=[1])
    assert losses.tolist() == [got, got] and scores[0] is None
    assert scores[1] == pytest.approx(minkpp, abs=1e-4)


# --------------------------------------------------------------------------------- (d)


def test_generation_sees_the_image():
    """Two faces, one question: a model that ignored the image could not name both."""
    torch.manual_seed(0)
    people = {"Ana Silva": square((220, 40, 40), 1), "Bo Chen": square((40, 40, 220), 2)}
    question = "Who is this person?"
    tok = train_tokenizer([f"USER: \n{question} ASSISTANT: {n}" for n in people] * 5, 300)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    model = build_model({"config": TINY_VLM}, len(tok), 0, tok.convert_tokens_to_ids(IMAGE_TOKEN))
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    vision = Vision(tok, proc, model.config)
    samples = [Sample(question, n, img) for n, img in people.items()] * 8
    hp = {"epochs": 10, "batch_size": 4, "lr": 3e-3, "weight_decay": 0.0, "max_len": 32}
    V.fit(model, vision, samples, hp, torch.Generator().manual_seed(0), "two faces")

    from clearbench.eval.vlm import greedy_answers

    prompts = [Sample(question, "", img) for img in people.values()]
    answers = greedy_answers(model, vision, prompts, max_new_tokens=6, batch_size=2)
    assert answers == list(people), answers
    # batched (left-padded, mixed with a text-only prompt) equals one at a time
    mixed = greedy_answers(model, vision, [Sample(question, ""), *prompts], 6, 3)[1:]
    assert mixed == answers


# ----------------------------------------------------------------------------- (e), (f)


def test_eval_table_has_the_contract_columns_and_six_tasks(
    vlm_original, clear_data, text_data, tmp_path
):
    paths = [tmp_path / f"{k}.parquet" for k in "ab"]
    for path in paths:
        evaluate_vlm(str(vlm_original), str(clear_data), str(text_data), "forget10", str(path),
                     EVAL)  # fmt: skip
    table = pd.read_parquet(paths[0])
    assert list(table.columns) == EVAL_SCHEMA.names
    assert tuple(table["task"].unique()) == TASKS
    forget = table[table["task"] == "forget"]
    assert forget["sample_id"].str.startswith("text:").any()
    assert forget["sample_id"].str.startswith("photo:").any()
    assert forget["para_loss"].notna().all()  # photo QA borrows the text QA's paraphrase
    faces = table[table["task"].str.endswith("facerec")]
    assert faces["para_loss"].isna().all() and (faces["perturbed_losses"].map(len) == 2).all()
    assert table["gt_loss"].map(np.isfinite).all()
    assert table["gt_minkpp"].map(len).gt(0).all()  # every row, image rows too
    # (f) prompts and options are seeded: a second evaluation is the same table
    pd.testing.assert_frame_equal(table, pd.read_parquet(paths[1]))


def test_facerec_prompts_and_options_are_seeded(clear_data, text_data):
    from clearbench.eval.vlm import task_tables

    a, b = (task_tables(clear_data, text_data, "forget10", seed=0) for _ in range(2))
    c = task_tables(clear_data, text_data, "forget10", seed=1)
    drawn = [t["retain_facerec"][["question", "perturbed_answers"]] for t in (a, b, c)]
    assert drawn[0].equals(drawn[1]) and not drawn[0].equals(drawn[2])
    rec = a["retain_facerec"]
    assert all(
        n not in wrong for n, wrong in zip(rec["answer"], rec["perturbed_answers"], strict=True)
    )
    assert Image.open(io.BytesIO(rec["image"][0])).size == (64, 64)


def test_holdout_task_where_the_dataset_has_it(clear_data, text_data, tmp_path):
    from clearbench.eval.vlm import HOLDOUT_FILE, task_tables

    text_dir, clear_dir = tmp_path / "text", tmp_path / "clear"
    for src, dst in ((text_data, text_dir), (clear_data, clear_dir)):
        dst.mkdir()
        for f in src.glob("*.parquet"):
            (dst / f.name).symlink_to(f)
    # holdout tables shaped as the forget split's, text and photos of the same authors
    (text_dir / HOLDOUT_FILE).unlink(missing_ok=True)
    (text_dir / HOLDOUT_FILE).symlink_to(text_data / "forget10.parquet")
    assert "holdout" not in task_tables(clear_dir, text_dir, "forget10", seed=0)  # no photos
    (clear_dir / HOLDOUT_FILE).symlink_to(clear_data / "forget10.parquet")
    tasks = task_tables(clear_dir, text_dir, "forget10", seed=0)
    assert tuple(tasks) == (*TASKS, "holdout")
    ids = tasks["holdout"]["sample_id"]
    assert ids.str.startswith("text:").any() and ids.str.startswith("photo:").any()


# ------------------------------------------------------------------------- unlearning


def unlearn_hp(method, **kw):
    own = yaml.safe_load((ROOT / "params.yaml").read_text())["unlearn"]["method_hp"][method]
    return {"method": method, "method_hp": own | ({"layer": 1} if method == "rmu" else {}),
            "seed": 0, "max_len": 64, "epochs": 2, "lr": 5e-3, "weight_decay": 0.0,
            "batch_size": 8, "l1_lambda": 0.0, "lora": LORA, "freeze_vision_tower": True} | kw  # fmt: skip


def test_modalities_pick_text_photo_and_identification_samples(clear_data, text_data):
    text = V.modality_samples(clear_data, text_data, "forget10", "text", 0)
    visual = V.modality_samples(clear_data, text_data, "forget10", "visual", 0)
    both = V.modality_samples(clear_data, text_data, "forget10", "both", 0)
    n = len(read_qa(text_data / "forget10.parquet"))
    assert len(text) == n and all(s.image is None for s in text)
    assert len(visual) == 2 * n and all(s.image is not None for s in visual)  # photo QA + who
    assert both == text + visual
    with pytest.raises(ValueError, match="modality must be one of"):
        V.modality_samples(clear_data, text_data, "forget10", "audio", 0)


@pytest.mark.parametrize("method", ["scrub", "rmu"])
def test_vlm_unlearning_keeps_the_tower_frozen_and_moves_the_model(
    method, vlm_original, clear_data, text_data, tmp_path
):
    from clearbench.unlearn.run import unlearn, vlm_track

    hp = unlearn_hp(method)
    track = vlm_track(str(clear_data), str(text_data), "forget10", "both", hp)
    assert all(s.image is not None for s in track.retain[len(track.retain) // 2 :])
    out = tmp_path / method
    assert unlearn(str(vlm_original), str(out), hp, track)["status"] == "ok"
    before, after = load_model(vlm_original)[0], load_model(out)[0]
    tower = tower_state(before)
    assert all(torch.equal(tower[k], v) for k, v in tower_state(after).items()), "tower moved"
    moved = [not torch.equal(a, b) for a, b in
             zip(before.state_dict().values(), after.state_dict().values(), strict=True)]  # fmt: skip
    assert any(moved), f"{method} left the model unchanged"


def test_vlm_dpo_runs_against_its_reference_per_modality(
    vlm_original, clear_data, text_data, tmp_path
):
    from clearbench.unlearn.run import train_reference, unlearn, vlm_track

    hp = unlearn_hp("dpo")
    ref = tmp_path / "ref"
    both = vlm_track(str(clear_data), str(text_data), "forget10", "both", hp)
    train_reference(str(vlm_original), str(ref), hp, both)
    for modality in ("text", "visual"):
        track = vlm_track(str(clear_data), str(text_data), "forget10", modality, hp)
        result = unlearn(str(vlm_original), str(tmp_path / modality), hp, track, str(ref))
        assert result["status"] == "ok", modality


def test_vlm_bfloat16_unlearns_and_evaluates_with_float32_losses(
    vlm_original, clear_data, text_data, tmp_path
):
    """The paper's precision on the LLaVA path: a bfloat16 base (pixels follow its dtype), a
    float32 adapter, finite losses, and an evaluation table close to the float32 one."""
    from clearbench.compute import CPU
    from clearbench.unlearn.run import unlearn, vlm_track

    bf16 = {"compute": CPU | {"dtype": "bfloat16"}}
    hp = unlearn_hp("scrub") | bf16
    track = vlm_track(str(clear_data), str(text_data), "forget10", "both", hp)
    out = tmp_path / "scrub"
    assert unlearn(str(vlm_original), str(out), hp, track)["status"] == "ok"
    losses = pd.read_csv(out / "losses.csv")
    assert np.isfinite(losses["loss"]).all() and len(losses) > 0
    tables = []
    for name, extra in (("bf16", bf16), ("fp32", {})):
        path = tmp_path / f"{name}.parquet"
        evaluate_vlm(str(out), str(clear_data), str(text_data), "forget10", str(path),
                     EVAL | extra)  # fmt: skip
        tables.append(pd.read_parquet(path))
    low, high = tables
    assert np.isfinite(low["gt_loss"]).all()
    assert np.allclose(low["gt_loss"], high["gt_loss"], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("variant", ["plain", "entangled"])
def test_vlm_unlink_is_one_adapter_that_blinds_the_projector_to_forget_photos(
    variant, vlm_original, clear_data, text_data, tmp_path
):
    """Unlink saved as a LoRA adapter: loading the chain gives exactly the edited projector, the
    rest of the model is untouched, and the projector's response to the forget photos falls
    by more than its response to retain photos."""
    from clearbench.unlearn.edit import photos
    from clearbench.unlearn.run import unlearn, vlm_track

    hp = unlearn_hp("unlink") | {"method_hp": unlearn_hp("unlink")["method_hp"] | {
        "variant": variant, "k": 4, "layers": ["*multi_modal_projector.linear_1"]}}  # fmt: skip
    track = vlm_track(str(clear_data), str(text_data), "forget10", "visual", hp)
    out = tmp_path / variant
    result = unlearn(str(vlm_original), str(out), hp, track)
    assert result["status"] == "ok" and result["rte_seconds"] < 5
    ((layer, report),) = result["layers"].items()
    assert layer.endswith("multi_modal_projector.linear_1") and report["k"] == 4
    before, meta = load_model(vlm_original)
    after = load_model(out)[0]
    changed = {n for (n, a), b in zip(before.state_dict().items(), after.state_dict().values(),
                                      strict=True) if not torch.allclose(a, b, atol=1e-7)}  # fmt: skip
    assert changed == {f"{layer}.weight"}
    delta = after.get_submodule(layer).weight - before.get_submodule(layer).weight
    assert torch.linalg.matrix_rank(delta).item() <= 4
    processor = load_image_processor(meta["base"])

    def response(model, samples):
        images = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos(samples, 16, 0)]
        px = processor(images=images, return_tensors="pt")["pixel_values"]
        feats = {}
        hook = model.get_submodule(layer).register_forward_hook(
            lambda m, i, o: feats.setdefault("out", o - m.bias)
        )
        with torch.no_grad():
            model.get_image_features(pixel_values=px)
        hook.remove()
        return feats["out"].norm()

    forget_drop = response(after, track.forget) / response(before, track.forget)
    retain_drop = response(after, track.retain) / response(before, track.retain)
    assert forget_drop < retain_drop
    if variant == "plain":  # the photos that span the subspace: their response is gone
        assert forget_drop < 0.1
