"""The published CLEAR (therem/CLEAR) loaded whole: a local copy in its Hub schema, with every
config its dataset card lists, gives every task of the vlm evaluation contract (DESIGN section
6) its paraphrase and its perturbed answers from the published columns."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from clearbench.data import backends as B
from clearbench.data import clear as C
from clearbench.data.outputs import REPORT_FILES, output_tables
from clearbench.data.text import build_text_dataset, read_qa
from clearbench.eval.vlm import TASKS, task_tables

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
SPLITS = ["full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99"]
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
S, STRS = pa.string(), pa.list_(pa.string())
PHOTO = [("image", IMAGE), ("caption", S), ("name", S)]
PERTURBED = [
    *PHOTO,
    ("paraphrased_caption", S),
    ("perturbed_captions", STRS),
    ("perturbed_names", STRS),
]
TOFU = [("image", IMAGE), ("caption", S), ("question", S), ("answer", S)]
REAL_FACES = [("image", IMAGE), ("answer", S), ("options", STRS)]
REAL_WORLD = [("question", S), ("answer", S), ("image", IMAGE), ("prompt", S), ("options", STRS)]
CELEBS = ["Tom Hanks", "Meryl Streep", "Denzel Washington"]


def tiny_png(seed: int) -> dict:
    pixels = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": f"img_{seed}.png"}


def write_config(folder, config, rows: list[dict], columns) -> None:
    """One config as the Hub stores it: <config>/train-00000-of-00001.parquet."""
    schema = pa.schema(columns)
    (folder / config).mkdir(parents=True)
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema)
    pq.write_table(table, folder / config / "train-00000-of-00001.parquet")


def eval_answers(photo: dict, names: list[str]) -> dict:
    """The published evaluation columns of one photo (the true name last, to be dropped)."""
    others = [n for n in names if n != photo["name"]]
    return {
        **photo,
        "paraphrased_caption": f"Put differently, {photo['caption']}",
        "perturbed_captions": [f"Not {photo['caption']}", f"Nor {photo['caption']}"],
        "perturbed_names": [*others[:2], photo["name"]],
    }


def write_published_copy(folder, text_dir) -> None:
    """Every config of therem/CLEAR's dataset card, tiny: one photo per text QA of the text
    dataset; the +tofu configs join the text dataset's QA of the same split."""
    text = {s: read_qa(text_dir / f"{s}.parquet") for s in [*SPLITS, "retain_eval"]}
    full = text["full"]
    photos = [
        {"image": tiny_png(i), "caption": f"{a} reading in a garden, photo {i}.", "name": a}
        for i, a in enumerate(full["author"])
    ]
    names = sorted(set(full["author"]))
    of = {s: [p for p in photos if p["name"] in set(text[s]["author"])] for s in text}
    write_config(folder, "data", photos, PHOTO)  # `default`: the same rows as full
    for split in SPLITS:
        write_config(folder, split, of[split], PHOTO)
        qa = text[split][["question", "answer"]].to_dict("records")
        write_config(folder, f"{split}+tofu", of[split] + qa, TOFU)
    for split in ("forget01", "forget05", "forget10"):
        # as in the published forget10_perturbed, the authors left a photo out
        kept = of[split][1:] if split == "forget10" else of[split]
        rows = [eval_answers(p, names) for p in kept]
        write_config(folder, f"{split}_perturbed", rows, PERTURBED)
    retain = [eval_answers(p, names) for p in of["retain_eval"]]
    write_config(folder, "retain_perturbed", retain, PERTURBED)
    faces = [
        {"image": tiny_png(100 + i), "answer": c, "options": [CELEBS[i - 1], c, CELEBS[i - 2]]}
        for i, c in enumerate(CELEBS)
    ]
    write_config(folder, "real_faces", faces, REAL_FACES)
    world = [
        {"question": "How many cats?", "answer": "2", "image": tiny_png(200), "prompt": "p",
         "options": ["1", "2", "3"]},
    ]  # fmt: skip
    write_config(folder, "real_world", world, REAL_WORLD)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    build_text_dataset({"kind": "synthetic"}, out, 0, 20, 2, FRACTIONS, 4, 2)
    return out


@pytest.fixture(scope="module")
def copy(text_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    write_published_copy(folder, text_dir)
    return folder


def published(copy, config) -> dict:
    """caption -> that photo's row of a published config."""
    df = pd.read_parquet(copy / config)
    return {r["caption"]: r for r in df.to_dict("records")}


def test_every_task_gets_the_published_paraphrase_and_perturbed_answers(copy, text_dir, tmp_path):
    hp = {"backends": {"source": "published"}, "published": {"source": str(copy)}}
    summary = C.build_clear_dataset(text_dir, tmp_path, {**hp, "progress": False})
    assert pq.read_schema(tmp_path / "forget10.parquet").names == C.PUBLISHED_PHOTOS.names
    assert summary["tables"]["retain_eval"] == len(pd.read_parquet(copy / "retain_perturbed"))
    tasks = task_tables(tmp_path, text_dir, "forget10", seed=0)
    assert tuple(tasks) == TASKS
    caption_of = {
        r["sample_id"]: r["caption"]
        for t in ("forget10", "retain_eval")
        for r in pd.read_parquet(tmp_path / f"{t}.parquet").to_dict("records")
    }

    for task, config, text in (
        ("forget", "forget10_perturbed", "forget10"),
        ("retain", "retain_perturbed", "retain_eval"),
    ):
        df, pub = tasks[task], published(copy, config)
        photo = df[df["sample_id"].str.startswith("photo:")]
        # the photo QA is exactly the published evaluation set, with its own columns
        assert sorted(photo["answer"]) == sorted(pub)
        for r in photo.to_dict("records"):
            p = pub[r["answer"]]
            assert r["paraphrased_answer"] == p["paraphrased_caption"]
            assert r["perturbed_answers"] == list(p["perturbed_captions"])
        # the text QA keeps the text dataset's paraphrase and perturbed answers
        qa = read_qa(text_dir / f"{text}.parquet")
        words = df[df["sample_id"].str.startswith("text:")]
        assert words["paraphrased_answer"].tolist() == qa["paraphrased_answer"].tolist()
        assert words["perturbed_answers"].tolist() == qa["perturbed_answers"].tolist()

    n_wrong = max(map(len, tasks["real_faces"]["perturbed_answers"]))
    for task, config in (
        ("forget_facerec", "forget10_perturbed"),
        ("retain_facerec", "retain_perturbed"),
    ):
        pub = published(copy, config)
        for r in tasks[task].to_dict("records"):
            assert r["paraphrased_answer"] is None  # the name stands in for it (DESIGN 6)
            caption = caption_of[r["sample_id"]]
            if caption in pub:  # the published wrong names, the true one dropped
                assert r["perturbed_answers"] == list(pub[caption]["perturbed_names"][:2])
            else:  # the photo the authors left out: today's seeded choice of other names
                assert len(r["perturbed_answers"]) == n_wrong
                assert r["answer"] not in r["perturbed_answers"]
    left_out = set(caption_of.values()) - set(published(copy, "forget10_perturbed"))
    left_out -= set(published(copy, "retain_perturbed"))
    assert len(left_out) == 1 and not left_out & set(tasks["forget"]["answer"])

    for task in ("real_faces", "real_world"):
        df, raw = tasks[task], pd.read_parquet(copy / task)
        assert df["paraphrased_answer"].isna().all()  # the contract has none here
        assert df["answer"].tolist() == raw["answer"].tolist()
        pairs = zip(raw["options"], raw["answer"], strict=True)
        wrong = [[o for o in opts if o != a] for opts, a in pairs]
        assert df["perturbed_answers"].tolist() == wrong
    assert tasks["real_faces"]["perturbed_answers"][0] == ["Denzel Washington", "Meryl Streep"]


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


def test_a_config_the_card_lists_but_the_copy_lacks_is_one_line_naming_it(copy, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(copy, partial)
    shutil.rmtree(partial / "data")  # `default` repeats `full`: not needed
    assert set(B.load_published_clear(partial)) == {*SPLITS, "retain_eval", *B.REAL_CONFIGS}
    for config in ("retain_perturbed", "retain95+tofu"):
        shutil.rmtree(partial / config)
    with pytest.raises(B.BackendError) as e:
        B.load_published_clear(partial)
    msg = one_line(e)
    assert str(partial) in msg and "retain_perturbed, retain95+tofu" in msg


def test_tofu_text_qa_must_be_the_text_datasets(copy, text_dir, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(copy, changed)
    path = changed / "forget05+tofu" / "train-00000-of-00001.parquet"
    table = pq.read_table(path).to_pylist()
    table[-1]["answer"] = "Something else entirely."
    pq.write_table(pa.Table.from_pylist(table, pq.read_schema(path)), path)
    text = {s: read_qa(text_dir / f"{s}.parquet") for s in SPLITS}
    B.load_published_clear(changed)  # without the text dataset there is nothing to check
    with pytest.raises(B.BackendError) as e:
        B.load_published_clear(changed, text=text)
    msg = one_line(e)
    assert f"{changed}/forget05+tofu" in msg and "1 not there, 1 missing" in msg


def test_the_hub_path_reads_the_same_configs(copy, text_dir, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    load, asked = datasets.load_dataset, []

    def from_copy(source, config):  # the Hub stand-in: the same files through `datasets`
        asked.append(config)
        files = str(copy / config / "*.parquet")
        return load("parquet", data_files=files, cache_dir=str(tmp_path))

    monkeypatch.setattr(datasets, "load_dataset", from_copy)
    text = {s: read_qa(text_dir / f"{s}.parquet") for s in SPLITS}
    hub = B.load_published_clear("therem/CLEAR", text=text)
    local = B.load_published_clear(copy)
    assert sorted(asked) == sorted(B.PUBLISHED_CONFIGS)
    for name, df in local.items():
        pd.testing.assert_frame_equal(hub[name], df, check_dtype=False)


def test_the_paper_profile_clear_data_job_writes_every_declared_output(copy, text_dir, tmp_path):
    """`clear_data` under config/paper.yaml (source: published), run by Snakemake on a local
    copy: the job completes (Snakemake checks every declared output), the declared outputs are
    the tables minus the face pool, and celebs.parquet is n_celebs x celeb_images synthesized
    images."""
    (tmp_path / "data").mkdir()
    shutil.copytree(text_dir, tmp_path / "data" / "text")
    overlay = {
        "data": {
            "clear": {"published": {"source": str(copy)}, "n_celebs": 3, "celeb_images": 2},
        },
        "compute": {"device": "cpu"},  # only the start-up device check reads it: no GPU here
    }
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "-s", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(ROOT / "config" / "paper.yaml"),
         str(tmp_path / "overlay.yaml"), "--allowed-rules", "clear_data", "--",
         "data/clear/data_card.md"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    job = (run.stdout + run.stderr).split("rule clear_data:", 1)[1]
    declared = re.search(r"^\s+output: (.*)$", job, re.M).group(1).split(", ")
    assert "data/clear/faces.parquet" not in declared  # no face pool is published
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    fractions = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["forget_fractions"]
    tables = ["full", "retain_eval", "holdout", "vision_split", "real_faces", "real_world"]
    tables += ["celebs", *fractions, *(f"retain{100 - int(s[6:]):02d}" for s in fractions)]
    expected = [f"data/clear/{t}.parquet" for t in tables]
    card = ["data/clear/data_card.md", "data/clear/data_card.png", "data/clear/sheets"]
    assert declared == [*expected, *card]
    for path in declared:
        assert (tmp_path / path).stat().st_size > 0, path
    assert paper["data"]["clear"]["backends"]["celebs"] == "parametric"
    celebs = pd.read_parquet(tmp_path / "data" / "clear" / "celebs.parquet")
    assert celebs["identity"].tolist() == [0, 0, 1, 1, 2, 2]
    size = paper["data"]["clear"]["image_size"]  # drawn at the paper's vision.image_size
    assert size == paper["vision"]["image_size"]
    assert C.decode(celebs["image"][0]).shape == (size, size, 3)
    card = (tmp_path / "data" / "clear" / "data_card.md").read_text()
    assert "parametric faces backend: 3 identities x 2 images" in card


def test_published_celebs_are_the_synthesized_ones(copy, text_dir, tmp_path):
    """Published or synthesized, the celebs come from the same function and seeds."""
    small = {"n_celebs": 4, "celeb_images": 3, "progress": False}
    pub = {"backends": {"source": "published"}, "published": {"source": str(copy)}, **small}
    C.build_clear_dataset(text_dir, tmp_path / "pub", pub)
    written = {p.stem for p in (tmp_path / "pub").glob("*.parquet")}
    assert written == set(output_tables("published", B.PHOTO_CONFIGS[1:4]))
    assert "faces" not in written
    for name in REPORT_FILES:
        assert (tmp_path / "pub" / name).stat().st_size > 500, name
    expected = C._celebs(C.resolve_hp(small))
    got = pd.read_parquet(tmp_path / "pub" / "celebs.parquet")
    assert len(got) == 4 * 3 and got["identity"].nunique() == 4
    assert got["sample_id"].tolist() == expected["sample_id"].tolist()
    assert [i["bytes"] for i in got["image"]] == [i["bytes"] for i in expected["image"]]


def test_a_forget_split_the_published_clear_lacks_is_one_line(copy, text_dir, tmp_path):
    text = tmp_path / "text"
    shutil.copytree(text_dir, text)
    shutil.copy(text / "forget10.parquet", text / "forget20.parquet")  # data.forget_fractions
    hp = {"backends": {"source": "published"}, "published": {"source": str(copy)}}
    with pytest.raises(C.ClearDataError) as e:
        C.build_clear_dataset(text, tmp_path / "out", {**hp, "progress": False})
    assert "no forget20 (it has forget01, forget05, forget10)" in one_line(e)
