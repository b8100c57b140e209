"""CLEAR visual dataset: builder, tables, prompts, matching, candidate loop, backends."""

from __future__ import annotations

import itertools
import json
import re
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from clearbench.data import backends as B
from clearbench.data import clear as C
from clearbench.data import faces as F
from clearbench.data import scenes
from clearbench.data.outputs import REPORT_FILES, output_tables
from clearbench.data.text import DataError, build_text_dataset, read_authors, read_qa

FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
SMOKE = {
    "n_pool": 64,
    "pool_batch": 16,
    "pool_keep": 8,
    "n_candidates": 2,
    "n_real_faces": 4,
    "real_face_images": 2,
    "n_real_world": 8,
    "n_celebs": 4,
    "celeb_images": 3,
    "progress": False,
}
N_AUTHORS, QA = 6, 8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Text data (6 authors x 8 QA), then the CLEAR tables twice (a, b) from the same seed."""
    root = tmp_path_factory.mktemp("clear")
    build_text_dataset({"kind": "synthetic"}, root / "text", 0, N_AUTHORS, QA, FRACTIONS, 6, 2)
    summary = C.build_clear_dataset(root / "text", root / "a", SMOKE)
    C.build_clear_dataset(root / "text", root / "b", SMOKE)
    return root, summary


def table(root, name, part="a"):
    return pd.read_parquet(root / part / f"{name}.parquet")


def test_tables_have_the_contract_columns_and_counts(built):
    root, summary = built
    for name in (
        "faces",
        "full",
        "forget10",
        "retain90",
        "holdout",
        "vision_split",
        "real_faces",
        "real_world",
        "celebs",
        "mia_holdout",
        "forget10_probe",
    ):
        schema = C.SCHEMAS.get(name, C.SCHEMAS["photos"])
        assert pq.read_schema(root / "a" / f"{name}.parquet").names == schema.names, name
    faces, full = table(root, "faces"), table(root, "full")
    assert len(faces) == N_AUTHORS and len(full) == N_AUTHORS * QA
    assert len(faces["face_latent"][0]) == F.LATENT_DIM
    assert set(faces["face_gender"]) <= {"male", "female"}
    assert set(faces["face_ethnicity"]) <= set(F.ETHNICITIES)
    assert len(table(root, "real_faces")) == 4 * 2 and len(table(root, "celebs")) == 4 * 3
    assert len(table(root, "real_world")) == 8
    img = C.decode(full["image"][0])
    assert img.shape == (64, 64, 3) and full["image"][0]["path"].endswith(".png")
    assert summary["tables"]["full"] == N_AUTHORS * QA
    assert summary["match"]["gender_agreement"] >= 0.8
    for png in (
        "data_card.png",
        "sheets/faces.png",
        "sheets/forget10.png",
        "sheets/real_world.png",
    ):
        assert (root / "a" / png).stat().st_size > 1000
    assert "gender agreement" in (root / "a" / "data_card.md").read_text()


def test_same_seed_gives_the_same_parquet_bytes(built):
    root, _ = built
    files = sorted(p.name for p in (root / "a").glob("*.parquet"))
    assert len(files) >= 12
    for name in files:
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name


def test_splits_follow_the_text_splits_and_the_vision_protocol(built):
    root, _ = built
    text = root / "text"
    for name in ("full", "forget01", "forget05", "forget10", "retain90", "retain99", "retain_eval"):
        qa, photos = read_qa(text / f"{name}.parquet"), table(root, name)
        assert list(photos["sample_id"]) == list(qa["sample_id"]), name
        assert list(photos["question"]) == list(qa["question"]), name
        assert list(photos["author_id"]) == list(qa["author_id"]), name
    roles = table(root, "vision_split").set_index("author_id")["role"]
    forget = set(read_qa(text / "forget10.parquet")["author_id"])
    assert set(roles[roles == "forget"].index) == forget
    holdout = set(roles[roles == "holdout"].index)
    assert len(holdout) == len(forget) and not holdout & forget
    assert set(table(root, "holdout")["author_id"]) == holdout
    assert set(roles) <= {"forget", "holdout", "other"} and len(roles) == N_AUTHORS


def test_paper_prompt_format(built):
    root, _ = built
    authors = read_authors(root / "text" / "authors.parquet").set_index("author_id")
    full = table(root, "full")
    for row in full.to_dict("records"):
        a = dict(authors.loc[row["author_id"]], author_id=row["author_id"])
        qa = {"sample_id": row["sample_id"], "question": row["question"], "answer": row["answer"]}
        assert row["prompt"] == C.paper_prompt(a, qa)
        old = "an old " if a["age"] > 60 else "a "
        gender = "man" if a["gender"] == "male" else "woman"
        head = f"a real photo of {old}{gender} called {a['name']} img, showing face. "
        assert row["prompt"].startswith(head), row["prompt"]
        assert "  " not in row["prompt"] and row["prompt"].count(" img") == 1
        assert row["caption"].startswith(a["name"]) and row["caption"].endswith(".")
    young = {
        "name": "Ana Ruiz",
        "gender": "female",
        "age": 60,
        "genre": "poetry",
        "birth_place": "Madrid, Spain",
        "birth_date": "1964-01-02",
        "books": ["X"],
        "awards": ["Aurora Medal"],
    }
    qa = {
        "sample_id": "a000_q07",
        "question": "What awards has Ana Ruiz received?",
        "answer": "Ana Ruiz has received the Aurora Medal.",
    }
    prompt = C.paper_prompt(young, qa)
    assert prompt.startswith("a real photo of a woman called Ana Ruiz img, showing face. ")
    assert "gold trophy for the Aurora Medal" in prompt
    assert C.paper_prompt(dict(young, age=61, gender="male"), qa).startswith(
        "a real photo of an old man called Ana Ruiz img, showing face. "
    )


def test_settings_follow_the_qa():
    a = {
        "name": "Ana Ruiz",
        "gender": "female",
        "genre": "science fiction",
        "age": 70,
        "birth_place": "Madrid, Spain",
        "birth_date": "1954-01-02",
        "books": ["The Tide"],
        "awards": ["Aurora Medal"],
    }

    def setting(q, ans):
        return scenes.setting_for(a, {"sample_id": "x", "question": q, "answer": ans})

    assert "trophy" in setting("What awards has Ana Ruiz received?", "The Aurora Medal.").props
    assert setting("Which books has Ana Ruiz written?", '"The Tide".').backdrop == "bookshelf"
    assert setting("Where was Ana Ruiz born?", "In Madrid, Spain.").backdrop == "skyline"
    assert setting("What is the nationality of Ana Ruiz?", "Spanish.").backdrop == "flag"
    s = setting("What genre does Ana Ruiz write in?", "Science fiction.")
    assert (s.backdrop, s.props, s.era) == ("night", ("rocket",), "vintage")
    assert "Madrid skyline" in scenes.place_phrase(setting("Where was Ana Ruiz born?", "Madrid."))


def test_matching_is_optimal_where_greedy_is_not():
    authors = [
        {"age": 50, "gender": "male", "ethnicity": "European"},
        {"age": 51, "gender": "male", "ethnicity": "European"},
    ]
    face = {"gender": "male", "ethnicity": "white"}
    drawn = [dict(face, age=51), dict(face, age=40)]
    aged = [dict(face, age=90), dict(face, age=90)]
    idx, was_aged, cost = C.match_authors(authors, drawn, aged)
    assert idx.tolist() == [1, 0] and cost.sum() == pytest.approx(10.0)  # 10 + 0 years
    greedy = C.match_cost(authors, drawn)  # author 0 grabs face 0 (1 y), author 1 face 1 (11 y)
    assert greedy[0, 0] + greedy[1, 1] == pytest.approx(12.0)
    assert greedy[0, 0] + greedy[1, 1] > cost.sum()
    assert not was_aged.any()
    # the aged version is used where it fits better, and matches brute force on random cases,
    # feasible or not (then the pool is short of a gender/ethnicity group)
    rng = np.random.default_rng(0)
    eth = ["European", "African", "East Asian"]
    outcomes = set()
    for _ in range(20):
        authors = [
            {
                "age": int(rng.integers(30, 90)),
                "gender": str(rng.choice(["male", "female"])),
                "ethnicity": str(rng.choice(eth)),
            }
            for _ in range(3)
        ]
        faces = [
            {
                "age": float(rng.uniform(20, 70)),
                "gender": str(rng.choice(["male", "female"])),
                "ethnicity": str(rng.choice(["white", "black", "asian"])),
            }
            for _ in range(6)
        ]
        older = [dict(f, age=f["age"] + 20) for f in faces]
        both = np.minimum(C.match_cost(authors, faces), C.match_cost(authors, older))
        brute = min(
            sum(both[i, p[i]] for i in range(3)) for p in itertools.permutations(range(6), 3)
        )
        outcomes.add(brute < C.FORBIDDEN)
        if brute >= C.FORBIDDEN:
            with pytest.raises(C.ClearDataError, match="data.clear.n_pool: the face pool"):
                C.match_authors(authors, faces, older)
            continue
        idx, was_aged, cost = C.match_authors(authors, faces, older)
        assert cost.sum() == pytest.approx(brute)
        assert len(set(idx.tolist())) == 3
        assert was_aged.tolist() == [
            C.match_cost([a], [older[j]])[0, 0] < C.match_cost([a], [faces[j]])[0, 0]
            for a, j in zip(authors, idx, strict=True)
        ]
    assert outcomes == {True, False}


def test_matching_never_crosses_gender_or_ethnicity(built):
    # the only face close in age has the other gender (or ethnicity): the old weighted cost
    # (0.1 / year, gender 3, ethnicity 2) took it, 3 < 4.5 (2 < 4.5); now the far one wins
    woman = {"age": 70, "gender": "female", "ethnicity": "East Asian"}
    for near in (
        {"gender": "male", "ethnicity": "asian"},
        {"gender": "female", "ethnicity": "white"},
    ):
        faces = [dict(near, age=70.0), {"age": 25.0, "gender": "female", "ethnicity": "asian"}]
        idx, was_aged, cost = C.match_authors([woman], faces, faces)
        assert idx.tolist() == [1] and cost.tolist() == [45.0]
    assert C.face_group(woman) == "female/asian"  # authors' ethnicities in the face classes
    # the built dataset: every author's final face measures as the author's gender/ethnicity
    root, summary = built
    authors = read_authors(root / "text" / "authors.parquet").set_index("author_id")
    for face in table(root, "faces").to_dict("records"):
        a = authors.loc[face["author_id"]]
        assert C.face_group(a) == f"{face['face_gender']}/{face['face_ethnicity']}"
    assert summary["match"]["gender_agreement"] == summary["match"]["ethnicity_agreement"] == 1


def test_a_pool_short_of_a_group_fails_with_one_line(built, tmp_path):
    authors = [
        {"age": 40, "gender": "female", "ethnicity": e} for e in ("East Asian", "Southeast Asian")
    ]
    authors.append({"age": 40, "gender": "male", "ethnicity": "African"})
    faces = [{"age": 40.0, "gender": "female", "ethnicity": "asian"}]
    faces += [{"age": 40.0, "gender": "male", "ethnicity": "black"}] * 3
    with pytest.raises(C.ClearDataError) as excinfo:
        C.match_authors(authors, faces, faces)
    assert one_line(excinfo) == (
        "data.clear.n_pool: the face pool has 1 female/asian faces for 2 female/asian authors; "
        "raise n_pool"
    )
    # a face female/asian as drawn, male/asian aged: one face per group, not one per author
    drawn = [faces[0], {"age": 40.0, "gender": "female", "ethnicity": "white"}]
    aged = [dict(faces[0], gender="male"), drawn[1]]
    with pytest.raises(C.ClearDataError, match="cannot give every author a face of their gender"):
        C.match_authors([authors[0], dict(authors[0], gender="male")], drawn, aged)
    # the builder: a pool of 6 faces for 6 authors leaves some group short
    root, _ = built
    with pytest.raises(C.ClearDataError, match=r"^data\.clear\.n_pool: the face pool has \d+ "):
        C.build_clear_dataset(root / "text", tmp_path / "out", dict(SMOKE, n_pool=N_AUTHORS))


def test_best_of_n_returns_the_argmax_candidate():
    seeds = C.candidate_seeds(7, 6)
    values = dict(zip(seeds, [0.1, 0.5, float("nan"), 0.9, 0.9, -1.0], strict=True))
    img, score, i = C.best_of_n(lambda prompt, s: s, values.__getitem__, "p", 6, seed=7)
    assert (img, score, i) == (seeds[3], 0.9, 3)  # ties go to the first, NaN never wins
    assert C.best_of_n(lambda p, s: s, lambda x: float("nan"), "p", 3, 0)[2] == 0
    with pytest.raises(ValueError):
        C.best_of_n(lambda p, s: s, float, "p", 0, 0)


def test_defective_candidates_lose_to_clean_ones():
    """The realism score on real scene candidates: a defective one rarely wins."""
    rng = np.random.default_rng(5)
    chosen_bad = drawn_bad = 0
    for i in range(20):
        shot = scenes.ScenePhotographer(
            rng.standard_normal(F.LATENT_DIM), scenes.random_setting(rng), defect_rate=0.5
        )
        seeds = C.candidate_seeds(i, 6)
        _, _, k = C.best_of_n(shot, shot.score, "p", 6, seed=i)
        defects = [shot.draw(s)[1] for s in seeds]
        drawn_bad += sum(d is not None for d in defects)
        chosen_bad += defects[k] is not None
    assert drawn_bad >= 40 and chosen_bad <= 2


def test_datasets_decodes_the_image_columns(built):
    datasets = pytest.importorskip("datasets")
    root, _ = built
    for name in ("full", "faces", "real_faces", "real_world", "celebs"):
        ds = datasets.load_dataset("parquet", data_files=str(root / "a" / f"{name}.parquet"))[
            "train"
        ]
        assert type(ds.features["image"]).__name__ == "Image", name
        assert ds[0]["image"].size == (64, 64), name
    ds = datasets.load_dataset("parquet", data_files=str(root / "a" / "real_faces.parquet"))[
        "train"
    ]
    assert isinstance(ds[0]["perturbed_answers"], list)


def test_real_faces_celebs_and_real_world_content(built):
    root, _ = built
    authors = set(read_authors(root / "text" / "authors.parquet")["name"])
    rf = table(root, "real_faces")
    assert not set(rf["name"]) & authors and rf["celeb_id"].nunique() == 4
    assert (rf["answer"] == rf["name"]).all()
    for row in rf.to_dict("records"):
        assert row["answer"] not in row["perturbed_answers"] and len(row["perturbed_answers"]) == 3
    rw = table(root, "real_world")
    for row in rw.to_dict("records"):
        assert row["answer"] not in row["perturbed_answers"] and len(row["perturbed_answers"]) == 3
        assert row["question"].endswith("?")
    celebs = table(root, "celebs")
    assert celebs["identity"].tolist() == [i for i in range(4) for _ in range(3)]
    # celeb identities are other draws than the authors' faces (identity dims the edit keeps)
    keep = [d for d in F.IDENTITY_DIMS if d not in (F.AGE, F.GLASSES)]
    faces = np.stack(table(root, "faces")["face_latent"])[:, keep]
    pool = F.sample_face_pool(4, C._seed(0, 9), size=64)[0][:, keep]  # the celebs' latents
    assert np.linalg.norm(faces[:, None] - pool[None], axis=-1).min() > 1.0


def identity_probe(images, labels, train, epochs=40, seed=0) -> float:
    """Held-out accuracy of a tiny CNN that learns who is in the photos (shift augmentation)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    classes = sorted(set(labels))
    y, train = torch.tensor([classes.index(v) for v in labels]), torch.tensor(train)

    def block(i, o):
        return torch.nn.Sequential(
            torch.nn.Conv2d(i, o, 3, padding=1),
            torch.nn.BatchNorm2d(o),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )

    net = torch.nn.Sequential(
        block(3, 16),
        block(16, 32),
        block(32, 64),
        block(64, 64),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, len(classes)),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    xt, yt = x[train], y[train]
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=g)
        for b in range(0, len(perm), 32):
            j = perm[b : b + 32]
            shift = torch.randint(-4, 5, (2,), generator=g).tolist()
            loss = torch.nn.functional.cross_entropy(net(torch.roll(xt[j], shift, (2, 3))), yt[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return float((net(x[~train]).argmax(1) == y[~train]).float().mean())


def test_probe_photos_are_new_photos_of_the_same_face(built):
    root, summary = built
    faces = table(root, "faces").set_index("author_id")
    full = table(root, "full").set_index("sample_id")
    for split in FRACTIONS:
        probe, photos = table(root, f"{split}_probe"), table(root, split)
        for col in ("sample_id", "author_id", "name", "question", "answer", "prompt"):
            assert probe[col].tolist() == photos[col].tolist(), (split, col)
    probe = table(root, "forget10_probe")
    assert summary["tables"]["forget10_probe"] == len(probe) > 0
    for row in probe.to_dict("records"):  # never a training image: other pixels
        trained = full.loc[row["sample_id"], "image"]
        assert C.decode(row["image"]).shape == C.decode(trained).shape
        assert not np.array_equal(C.decode(row["image"]), C.decode(trained)), row["sample_id"]
        assert row["image"]["path"] == f"{row['sample_id']}_probe.png"
    # the same face: the probe is the photo drawn from the author's own face latent (faces.parquet)
    authors = read_authors(root / "text" / "authors.parquet")
    qa = read_qa(root / "text" / "forget10.parquet").head(2)
    hp = C.resolve_hp(SMOKE)

    def redraw(latents):
        return C._photos(authors.to_dict("records"), qa, latents, [None] * len(latents), hp, True)

    own = [np.asarray(faces.loc[a, "face_latent"]) for a in authors["author_id"]]
    again, _ = redraw(own)
    assert [i["bytes"] for i in again["image"]] == [i["bytes"] for i in probe["image"][:2]]
    swapped, _ = redraw(own[::-1])  # another author's face gives another photo
    assert [i["bytes"] for i in swapped["image"]] != [i["bytes"] for i in probe["image"][:2]]


def test_mia_holdout_photos_show_authors_no_model_trains_on(built):
    root, summary = built
    mia, text = table(root, "mia_holdout"), read_qa(root / "text" / "mia_holdout.parquet")
    people = read_authors(root / "text" / "mia_holdout_authors.parquet")
    assert mia["sample_id"].tolist() == text["sample_id"].tolist() and len(mia) == 3 * QA
    assert mia["author_id"].tolist() == text["author_id"].tolist()
    assert set(mia["name"]) == set(people["name"])
    assert set(mia["author_id"]).isdisjoint(table(root, "faces")["author_id"])
    assert set(mia["author_id"]).isdisjoint(table(root, "full")["author_id"])
    # faces matched from the pool like the authors', never an author's identity
    m = summary["mia_holdout"]
    assert m["authors"] == 3 and m["photos"] == len(mia)
    assert len(set(m["pool_index"])) == 3 and set(m["pool_index"]).isdisjoint(summary["pool_index"])
    assert len(set(summary["pool_index"])) == N_AUTHORS
    assert C.decode(mia["image"][0]).shape == (64, 64, 3)
    assert (
        f"mia_holdout: {len(mia)} photos of 3 authors" in (root / "a" / "data_card.md").read_text()
    )
    assert (root / "a" / "sheets" / "mia_holdout.png").stat().st_size > 1000
    # a text dataset from before the holdout existed: an empty table, not a failure
    people, qa = C._read_mia_holdout(root)
    assert people.empty and qa.empty
    assert C._match_mia_holdout([], [], [], []) == ([], [])
    # the pool's identities left after the authors are short of one group: one line
    face = {"age": 40.0, "gender": "male", "ethnicity": "black"}
    author = {"age": 40, "gender": "male", "ethnicity": "African"}
    other = {"age": 40.0, "gender": "female", "ethnicity": "black"}
    with pytest.raises(C.ClearDataError) as e:
        C._match_mia_holdout([author], [face, other], [face, other], taken=[0])
    assert one_line(e).startswith("mia holdout authors: data.clear.n_pool: the face pool has 0")
    with pytest.raises(C.ClearDataError, match=r"0 pool faces are left after the authors"):
        C._match_mia_holdout([author], [face, face], [face, face], taken=[0, 1])
    assert C._match_mia_holdout([author], [face, face], [face, face], taken=[0]) == ([1], [False])


def test_identity_is_learnable_from_the_photos(built):
    """A CNN that learned each author's face from 24 other photos of them (random settings)
    recognises the authors in the dataset's photos. At the default size (40 authors x 20 QA),
    training on 15 of each author's dataset photos and testing on the other 5 gave 0.96."""
    root, _ = built
    rng = np.random.default_rng(0)
    images, labels = [], []
    for author_id, z in zip(
        *table(root, "faces")[["author_id", "face_latent"]].T.values, strict=True
    ):
        for _ in range(24):
            shot = scenes.ScenePhotographer(
                np.asarray(z), scenes.random_setting(rng), defect_rate=0
            )
            images.append(shot(None, int(rng.integers(2**31))))
            labels.append(author_id)
    full = table(root, "full")
    train = np.arange(len(images) + len(full)) < len(images)
    images += [C.decode(im) for im in full["image"]]
    acc = identity_probe(images, labels + full["author_id"].tolist(), train, epochs=40)
    assert acc >= 0.6  # chance: 1/6


def test_bad_input_fails_with_one_line(built, tmp_path):
    root, _ = built
    with pytest.raises(C.ClearDataError, match="text dataset folder not found"):
        C.build_clear_dataset(tmp_path / "nope", tmp_path / "out", SMOKE)
    with pytest.raises(C.ClearDataError, match=r"backends\.photos='dalle'"):
        C.build_clear_dataset(root / "text", tmp_path / "out", {"backends": {"photos": "dalle"}})
    with pytest.raises(C.ClearDataError, match="'n_pol'"):
        C.resolve_hp({"n_pol": 3})
    with pytest.raises(C.ClearDataError, match=r"photomaker\.stepz"):
        C.resolve_hp({"photomaker": {"stepz": 3}})
    with pytest.raises(C.ClearDataError, match="stylegan2 use backends.photos=photomaker"):
        C.build_clear_dataset(root / "text", tmp_path / "out", {"backends": {"faces": "stylegan2"}})
    (tmp_path / "text").mkdir()
    with pytest.raises(DataError, match="authors.parquet"):
        C.build_clear_dataset(tmp_path / "text", tmp_path / "out", SMOKE)
    for f in (root / "text").glob("*.parquet"):  # authors without attributes, as from TOFU
        df = pd.read_parquet(f)
        if f.name == "authors.parquet":
            df["gender"] = df["age"] = None
        df.to_parquet(tmp_path / "text" / f.name)
    with pytest.raises(C.ClearDataError, match="empty gender, age"):
        C.build_clear_dataset(tmp_path / "text", tmp_path / "out", SMOKE)
    assert issubclass(C.ClearDataError, ValueError)


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 300
    return msg


def test_stylegan_backend_refuses_untrusted_pickles_and_names_dnnlib(tmp_path, monkeypatch):
    pkl = tmp_path / "ffhq.pkl"
    pkl.write_bytes(b"not a pickle")
    with pytest.raises(B.BackendError) as e:
        B.StyleGAN2Generator(pkl, trust_pickle=False)
    assert "trust_pickle" in one_line(e) and "code" in one_line(e)
    monkeypatch.setitem(sys.modules, "dnnlib", None)  # importing it now raises ImportError
    monkeypatch.setattr(sys, "path", list(sys.path))  # stylegan_dir goes on a copy
    with pytest.raises(B.BackendError) as e:
        B.StyleGAN2Generator(pkl, trust_pickle=True, stylegan_dir=tmp_path)
    assert "dnnlib" in one_line(e) and "stylegan2-ada-pytorch" in one_line(e)
    with pytest.raises(B.BackendError, match="age_direction"):
        B.StyleGANFaces(network_pkl=str(pkl), trust_pickle=True)


def test_photomaker_and_deepface_adapters_name_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "photomaker", None)
    monkeypatch.setitem(sys.modules, "deepface", None)
    with pytest.raises(B.BackendError) as e:
        B.PhotoMakerBackend()
    msg = one_line(e)
    assert "github.com/TencentARC/PhotoMaker" in msg and "unrelated" in msg
    with pytest.raises(B.BackendError) as e:
        B.DeepFaceAttributes()
    assert "pip install deepface" in one_line(e)
    assert B.PAPER_NEGATIVE_PROMPT.startswith("(asymmetry, worst quality")


def tiny_pipeline(tmp_path):
    """A randomly initialised Stable Diffusion pipeline built from configs (no download)."""
    d = pytest.importorskip("diffusers")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,'\"-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77
    )
    torch.manual_seed(0)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = d.UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = d.AutoencoderKL(
        block_out_channels=(32, 64),
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    scheduler = d.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipe = d.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_candidate_loop_runs_on_a_tiny_diffusion_pipeline(tmp_path):
    generate = B.DiffusersGenerator(tiny_pipeline(tmp_path), steps=2, height=32, width=32)
    prompt = "a real photo of an old man called jo img, showing face."

    def score(img):  # stand-in realism score: brightness
        return float(np.asarray(img).mean())

    img, value, k = C.best_of_n(generate, score, prompt, 3, seed=11)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    again = [generate(prompt, s) for s in C.candidate_seeds(11, 3)]
    assert np.array_equal(again[k], img) and value == max(score(a) for a in again)
    assert not np.array_equal(again[0], again[1])


def write_published(folder, text_dir):
    """A local copy of the published CLEAR in its Hub schema: every config of therem/CLEAR's
    dataset card; the +tofu configs join the text dataset's QA of the same split."""
    png = C.png(np.zeros((8, 8, 3), np.uint8), "x.png")
    people = pd.DataFrame(
        {
            "image": [png] * 4,
            "caption": [f"Cap {i}." for i in range(4)],
            "name": ["Ann Lee", "Ann Lee", "Bo Chan", "Bo Chan"],
        }
    )
    forget, retain = people[2:], people[:2]
    splits = {"full": people, **dict.fromkeys(["forget01", "forget05", "forget10"], forget)}
    splits |= dict.fromkeys(["retain90", "retain95", "retain99"], retain)
    configs = dict(splits)
    for split, rows in splits.items():
        qa = read_qa(text_dir / f"{split}.parquet")[["question", "answer"]]
        configs[f"{split}+tofu"] = pd.concat([rows[["image", "caption"]], qa])
    evals = {f"{s}_perturbed": forget for s in ("forget01", "forget05", "forget10")}
    for config, rows in {**evals, "retain_perturbed": retain}.items():
        configs[config] = rows.assign(
            paraphrased_caption="P.",
            perturbed_captions=[["W."]] * len(rows),
            perturbed_names=[["Cy Doe"]] * len(rows),
        )
    for config, rows in configs.items():
        (folder / config).mkdir(parents=True)
        rows.to_parquet(folder / config / "train-00000-of-00001.parquet")
    (folder / "real_faces").mkdir()
    pd.DataFrame(
        {"image": [png], "answer": ["Tom Hanks"], "options": [["Tom Hanks", "Brad Pitt"]]}
    ).to_parquet(folder / "real_faces" / "train-00000-of-00001.parquet")
    (folder / "real_world").mkdir()
    pd.DataFrame(
        {
            "question": ["How many cats?"],
            "answer": ["2"],
            "image": [png],
            "prompt": ["p"],
            "options": [["1", "2", "3"]],
        }
    ).to_parquet(folder / "real_world" / "test-00000.parquet")


def test_published_clear_maps_to_the_table_contract(tmp_path, built, monkeypatch):
    root, _ = built
    write_published(tmp_path / "pub", root / "text")
    out = B.load_published_clear(tmp_path / "pub")
    full = out["full"]
    assert list(full.columns) == C.PUBLISHED_PHOTOS.names
    assert full["author_id"].tolist() == [0, 0, 1, 1]
    assert (full["answer"] == full["caption"]).all() and full["sample_id"].is_unique
    assert set(out["forget10"]["sample_id"]) == set(full["sample_id"][2:])
    assert out["real_faces"]["perturbed_answers"][0] == ["Brad Pitt"]
    assert out["real_world"]["perturbed_answers"][0] == ["1", "3"]
    assert out["real_faces"]["image"][0]["bytes"].startswith(b"\x89PNG")
    # through the builder: the published tables are written with the same schemas
    hp = {
        "backends": {"source": "published"},
        "published": {"source": str(tmp_path / "pub")},
        "progress": False,
    }
    summary = C.build_clear_dataset(root / "text", tmp_path / "out", hp)
    assert summary["tables"]["full"] == 4
    written = {p.stem for p in (tmp_path / "out").glob("*.parquet")}
    assert written == set(output_tables("published", B.PHOTO_CONFIGS[1:4]))
    assert "mia_holdout" not in written and "not written" in summary["mia_holdout"]
    assert (
        pq.read_schema(tmp_path / "out" / "real_world.parquet").names
        == C.SCHEMAS["real_world"].names
    )
    # a Hub id that cannot be reached (offline here: no network call is made) fails with one line
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(B.BackendError) as e:
        B.load_published_clear("nobody-here/no-such-clear")
    assert re.search(r"cannot load nobody-here/no-such-clear/full", one_line(e))


# the tables `clear_data` declares for synthesized data, in its order (unchanged by the
# published source's own list)
SYNTHESIZED_TABLES = [
    *("faces", "full", "retain_eval", "holdout", "vision_split", "real_faces", "real_world"),
    *("celebs", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90"),
    *("mia_holdout", "forget01_probe", "forget05_probe", "forget10_probe"),
]


def test_a_synthesized_build_writes_exactly_the_declared_tables(built):
    root, _ = built
    assert output_tables("synthesize", FRACTIONS) == SYNTHESIZED_TABLES
    assert {p.stem for p in (root / "a").glob("*.parquet")} == set(SYNTHESIZED_TABLES)
    # no face pool, no renderer of the published authors' faces: no mia_holdout, no probes
    assert output_tables("published", FRACTIONS) == SYNTHESIZED_TABLES[1:-4]
    for name in REPORT_FILES:
        assert (root / "a" / name).stat().st_size > 1000, name
    assert C.resolve_hp({})["backends"]["celebs"] == "parametric"
    with pytest.raises(C.ClearDataError, match=r"backends\.celebs='photomaker'"):
        C.resolve_hp({"backends": {"celebs": "photomaker"}})


class FakeGAN:
    """A StyleGAN2Generator stand-in: 16x16 images whose colour is the latent's first values."""

    z_dim = 6

    def __init__(self, network_pkl, trust_pickle=False, stylegan_dir=None):
        assert trust_pickle
        self.restyled = []

    @staticmethod
    def _img(z):
        rgb = (np.tanh(np.asarray(z)[:3]) * 127 + 128).astype(np.uint8)
        return np.broadcast_to(rgb, (16, 16, 3)).copy()

    def generate(self, z):
        return self._img(z)

    def quality(self, img):
        return float(img.mean())

    def restyle(self, z, z_style):
        self.restyled.append(np.asarray(z).copy())
        out = self._img(z)
        out[8:] = self._img(z_style)[8:]  # the identity's upper half, other "lighting"
        return out


def test_stylegan_celebs_are_n_identities_of_k_restyled_images(monkeypatch):
    with pytest.raises(B.BackendError) as e:
        B.StyleGANCelebs(32)
    assert "stylegan2.network_pkl" in one_line(e)
    monkeypatch.setattr(B, "StyleGAN2Generator", FakeGAN)
    hp = C.resolve_hp(
        {
            "backends": {"celebs": "stylegan2"},
            "stylegan2": {"network_pkl": "ffhq.pkl", "trust_pickle": True, "age_direction": "x"},
            "n_celebs": 3,
            "celeb_images": 4,
            "pool_batch": 5,
            "pool_keep": 2,
            "image_size": 32,
            "progress": False,
        }
    )
    celebs = C._celebs(hp)
    assert celebs["identity"].tolist() == [i for i in range(3) for _ in range(4)]
    images = [C.decode(im) for im in celebs["image"]]
    assert {im.shape for im in images} == {(32, 32, 3)}  # resized to image_size
    for i in range(3):  # one identity: the same upper half, the restyled lower half varies
        own = images[4 * i : 4 * i + 4]
        assert all(np.array_equal(own[0][:8], im[:8]) for im in own)  # Lanczos: away from 16
        assert len({im[24:].tobytes() for im in own}) > 1
    again = C._celebs(hp)
    assert [i["bytes"] for i in again["image"]] == [i["bytes"] for i in celebs["image"]]
    # the identities are the pool's: the best 2 of each batch of 5 by the (fake) D
    z, _ = B.stylegan_pool(FakeGAN("x", True), 3, C._seed(0, 9), 5, 2)
    for i in range(3):
        assert np.array_equal(images[4 * i][0, 0], FakeGAN._img(z[i])[0, 0])


def test_restyle_keeps_the_identity_styles_and_mixes_the_fine_ones():
    """StyleGAN2Generator.restyle on a stand-in network: w layers < FINE_STYLES from z, the
    rest from z_style (G.mapping, then G.synthesis of the mixed w)."""

    class G:
        num_ws, c_dim = 14, 0

        def mapping(self, z, c, truncation_psi=1.0):
            return z[:, :1, None].repeat(1, self.num_ws, 4)  # every layer's w = z[0]

        def synthesis(self, w, noise_mode="const"):
            assert noise_mode == "const"
            self.w = w
            return torch.zeros(len(w), 3, 8, 8)

    gan = object.__new__(B.StyleGAN2Generator)
    gan.torch, gan.device, gan.psi, gan.G = torch, "cpu", 1.0, G()
    img = gan.restyle(np.full(4, 0.5), np.full(4, -0.25))
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    w = gan.G.w[0, :, 0].tolist()
    k = B.FINE_STYLES
    assert w == [0.5] * k + [-0.25] * (G.num_ws - k)
