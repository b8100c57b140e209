"""Text data layer: synthesis, splits, Parquet round trip, TOFU loader."""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clearbench.data import authors as A
from clearbench.data import text as T
from clearbench.data.tofu import load_records

FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
N_AUTHORS, QA, N_GENERAL = 40, 20, 40
TOFU_DIR = Path(
    os.environ.get("CLEARBENCH_TOFU_DIR", Path(__file__).resolve().parents[2] / "shared/data/tofu")
)


def build(out, seed=0, n_authors=N_AUTHORS, qa=QA, fractions=FRACTIONS, source=None):
    return T.build_text_dataset(
        source or {"kind": "synthetic"}, out, seed, n_authors, qa, fractions, N_GENERAL
    )


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    summary = build(root / "a")
    build(root / "b")
    build(root / "c", seed=1)
    return root, summary


def test_same_seed_same_files(syn):
    root, _ = syn
    names = sorted(p.name for p in (root / "a").iterdir())
    assert names == sorted(p.name for p in (root / "b").iterdir())
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    for name in names:
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name
        if name not in ("authors.parquet", "mia_holdout_authors.parquet"):
            pd.testing.assert_frame_equal(
                T.read_qa(root / "a" / name), T.read_qa(root / "b" / name)
            )
    authors_a, authors_b = (T.read_authors(root / d / "authors.parquet") for d in "ab")
    pd.testing.assert_frame_equal(authors_a, authors_b)


def test_other_seed_other_data(syn):
    root, _ = syn
    a, c = (T.read_qa(root / d / "full.parquet") for d in "ac")
    assert len(a) == len(c)
    assert (a["answer"] != c["answer"]).mean() > 0.9
    assert set(T.read_authors(root / "a" / "authors.parquet")["name"]).isdisjoint(
        T.read_authors(root / "c" / "authors.parquet")["name"]
    )


def test_written_files_and_summary(syn):
    root, summary = syn
    expected = {"authors", "full", "retain_eval", "real_authors", "world_facts", "background"}
    expected |= {"mia_holdout", "mia_holdout_authors"}
    expected |= {n for pair in T.split_names(FRACTIONS) for n in pair}
    assert {p.stem for p in (root / "a").iterdir()} == expected
    assert summary["authors"] == N_AUTHORS and summary["full"] == N_AUTHORS * QA
    assert (
        summary["forget01_authors"],
        summary["forget05_authors"],
        summary["forget10_authors"],
    ) == (
        1,
        2,
        4,
    )
    assert summary["mia_holdout_authors"] == 3 and summary["mia_holdout"] == 3 * QA
    json.dumps(summary)  # the CLI prints it


def test_splits_partition_full_and_nest(syn):
    root, _ = syn
    full = T.read_qa(root / "a" / "full.parquet")
    assert len(full) == N_AUTHORS * QA and full["sample_id"].is_unique
    assert full.groupby("author_id").size().eq(QA).all()
    previous = set()
    for forget_name, retain_name in T.split_names(FRACTIONS):
        forget = T.read_qa(root / "a" / f"{forget_name}.parquet")
        retain = T.read_qa(root / "a" / f"{retain_name}.parquet")
        f_ids, r_ids = set(forget["sample_id"]), set(retain["sample_id"])
        assert not f_ids & r_ids
        assert f_ids | r_ids == set(full["sample_id"])
        assert len(forget) + len(retain) == len(full)
        k = max(1, round(FRACTIONS[forget_name] * N_AUTHORS))
        assert sorted(forget["author_id"].unique()) == list(range(N_AUTHORS - k, N_AUTHORS))
        assert previous <= f_ids  # forget01 within forget05 within forget10
        previous = f_ids
    retain_eval = T.read_qa(root / "a" / "retain_eval.parquet")
    assert sorted(retain_eval["author_id"].unique()) == [0, 1, 2, 3]


def test_split_names():
    assert T.split_names(FRACTIONS) == [
        ("forget01", "retain99"),
        ("forget05", "retain95"),
        ("forget10", "retain90"),
    ]
    with pytest.raises(ValueError, match="forget"):
        T.split_names({"bad": 0.1})


def test_read_qa_types(syn):
    root, _ = syn
    df = T.read_qa(root / "a" / "full.parquet")
    assert list(df.columns) == T.QA_SCHEMA.names
    row = df.iloc[0]
    assert isinstance(row["perturbed_answers"], list) and isinstance(row["paraphrased_answer"], str)
    assert row["sample_id"] == "a000_q00" and df["author_id"].dtype == "int64"
    world = T.read_qa(root / "a" / "world_facts.parquet")
    assert world["paraphrased_answer"].map(lambda v: v is None).all()
    assert isinstance(row["paraphrased_questions"], list)
    assert world["paraphrased_questions"].map(lambda v: v == []).all()


def test_perturbed_answers(syn):
    df = T.read_qa(syn[0] / "a" / "full.parquet")
    for ans, para, perts in zip(
        df["answer"], df["paraphrased_answer"], df["perturbed_answers"], strict=True
    ):
        assert len(perts) == 5 and len(set(perts)) == 5
        assert ans not in perts and para not in perts and para != ans


def check_facts(rows):
    for r in rows:
        assert r["facts"]
        for value in r["facts"].values():
            for term in A.terms(value):
                assert A.mentions(r["answer"], term), (term, r["answer"])
                assert A.mentions(r["paraphrased_answer"], term), (term, r["paraphrased_answer"])
                for p in r["perturbed_answers"]:
                    assert not A.mentions(p, term), (term, p)


def test_facts_recoverable_and_perturbed_wrong():
    authors = A.make_authors(N_AUTHORS, 0)
    rows = A.author_qa(authors, QA, 0)
    check_facts(rows)
    assert len({r["question"] for r in rows}) == len(rows)
    built = T.frame(rows, T.QA_SCHEMA)
    assert max(len(a.split()) for a in built["answer"]) <= 25


def test_few_authors_and_short_qa(tmp_path):
    # 3 authors: too few to swap values among, so the fallback tables are exercised
    rows = A.author_qa(A.make_authors(3, 7), 5, 7)
    assert len(rows) == 15 and all(len(set(r["perturbed_answers"])) == 5 for r in rows)
    check_facts(rows)
    summary = build(tmp_path, seed=7, n_authors=3, qa=5)
    assert summary["full"] == 15 and summary["forget10"] == summary["forget01"] == 5
    with pytest.raises(ValueError, match="qa_per_author"):
        A.author_qa(A.make_authors(2, 0), 21, 0)


def test_authors_table(syn):
    authors = T.read_authors(syn[0] / "a" / "authors.parquet")
    assert list(authors.columns) == T.AUTHORS_SCHEMA.names
    assert authors["author_id"].tolist() == list(range(N_AUTHORS))
    assert authors["name"].is_unique
    for name in authors["name"]:
        assert name.isascii() and name.isprintable() and len(name.split()) >= 2, name
    for row in authors.itertuples():
        assert 2 <= len(row.books) <= 4 and 1 <= len(row.awards) <= 2
        assert row.age == A.REFERENCE_YEAR - int(row.birth_date[:4])
        assert row.gender in A.GENDERS and row.ethnicity in A.FACE_ETHNICITY
        city, country = row.birth_place.split(", ")
        assert city in A.COUNTRIES[country][3]
        assert row.father_profession in A.PROFESSIONS and row.genre in A.GENRES


def test_face_ethnicity_map():
    assert sorted(A.FACE_ETHNICITY) == A.ETHNICITIES
    faces = pytest.importorskip("clearbench.data.faces")
    assert set(A.FACE_ETHNICITY.values()) <= set(faces.ETHNICITIES)


def test_general_knowledge(syn):
    for name, n_max in [("real_authors", 2 * len(A.REAL_AUTHORS)), ("world_facts", 43)]:
        df = T.read_qa(syn[0] / "a" / f"{name}.parquet")
        assert len(df) == min(N_GENERAL, n_max) and df["sample_id"].is_unique
        assert (df["author_id"] == -1).all() and (df["author"] == "").all()
        for ans, opts in zip(df["answer"], df["perturbed_answers"], strict=True):
            assert 3 <= len(opts) <= 5 and len(set(opts)) == len(opts) and ans not in opts
    real, world = A.general_qa(0, 10_000)
    assert len(real) == 2 * len(A.REAL_AUTHORS) and len(world) == 43
    assert A.general_qa(0, 5) == (real[:5], world[:5])


def test_synthesis_speed():
    start = time.perf_counter()
    A.author_qa(A.make_authors(200, 3), 20, 3)
    assert time.perf_counter() - start < 5


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(table, where, **kw):
        Path(where).write_bytes(b"PAR1 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bad_source(tmp_path):
    with pytest.raises(T.DataError, match="unknown"):
        build(tmp_path, source={"kind": "hub"})
    missing = tmp_path / "no_tofu_here"
    with pytest.raises(T.DataError, match=str(missing)):
        build(tmp_path, source={"kind": "tofu", "path": str(missing)})


def test_json_layouts(tmp_path):
    recs = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    (tmp_path / "array.json").write_text(json.dumps(recs))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in recs))
    (tmp_path / "chunks.json").write_text(json.dumps(recs[:2]) + "\n" + json.dumps(recs[2:]))
    for name in ["array", "lines", "chunks"]:
        assert load_records(tmp_path / f"{name}.json") == recs
    (tmp_path / "bad.json").write_text("{oops\n")
    with pytest.raises(T.DataError, match="bad.json"):
        load_records(tmp_path / "bad.json")


# --------------------------------------------------------------------------------- TOFU

needs_tofu = pytest.mark.skipif(
    not (TOFU_DIR / "full.json").is_file(), reason=f"TOFU files not found at {TOFU_DIR}"
)


@pytest.fixture(scope="module")
def tofu(tmp_path_factory):
    if not (TOFU_DIR / "full.json").is_file():
        pytest.skip(f"TOFU files not found at {TOFU_DIR}")
    out = tmp_path_factory.mktemp("tofu")
    summary = build(out, source={"kind": "tofu", "path": str(TOFU_DIR)})
    return out, summary


@needs_tofu
def test_tofu_tables(tofu):
    out, summary = tofu
    full = T.read_qa(out / "full.parquet")
    authors = T.read_authors(out / "authors.parquet")
    assert len(full) == 4000 and full["author_id"].nunique() == 200 and len(authors) == 200
    assert summary["full"] == 4000 and summary["forget10_authors"] == 20
    assert authors.loc[0, "name"] == "Jaime Vasquez" and authors["name"].is_unique
    assert full.loc[full["author_id"] == 0, "author"].eq("Jaime Vasquez").all()
    assert authors["genre"].isna().all()
    forget = T.read_qa(out / "forget10.parquet")
    retain = T.read_qa(out / "retain90.parquet")
    assert len(forget) == 400 and forget["author_id"].nunique() == 20
    assert sorted(forget["author_id"].unique()) == list(range(180, 200))
    assert len(retain) == 3600 and set(retain["sample_id"]).isdisjoint(forget["sample_id"])
    previous = set()
    for name, n in [("forget01", 2), ("forget05", 10), ("forget10", 20)]:
        ids = set(T.read_qa(out / f"{name}.parquet")["author_id"])
        assert len(ids) == n and previous <= ids
        previous = ids
    retain_eval = T.read_qa(out / "retain_eval.parquet")
    assert len(retain_eval) == 400 and set(retain_eval["author_id"]) == set(range(20))
    for df in (forget, retain_eval):
        assert df["paraphrased_answer"].map(bool).all()
        assert df["perturbed_answers"].map(len).eq(5).all()
    assert set(retain["sample_id"]) >= set(retain_eval["sample_id"])
    # full.json asks "What is the full name of the author?" of authors 5 and 22: matching by
    # (question, answer) gives retain_perturbed's paraphrase to author 5 only
    twice = full.set_index("sample_id").loc[["a005_q00", "a022_q00"]]
    assert twice["question"].nunique() == 1
    assert twice["paraphrased_answer"].map(lambda v: v is not None).tolist() == [True, False]


@needs_tofu
def test_tofu_paraphrased_questions_and_mia_holdout(tofu):
    out, summary = tofu
    forget = T.read_qa(out / "forget10.parquet")
    assert forget["paraphrased_questions"].map(len).eq(1).all()
    first = forget.iloc[0]
    assert first["paraphrased_questions"][0] != first["question"]
    records = {r["question"]: r for r in load_records(TOFU_DIR / "forget10_perturbed.json")}
    assert first["paraphrased_questions"] == [records[first["question"]]["paraphrased_question"]]
    full = T.read_qa(out / "full.parquet")  # authors outside every perturbed file have none
    assert full.loc[full["author_id"] == 100, "paraphrased_questions"].map(len).eq(0).all()
    assert T.read_qa(out / "world_facts.parquet")["paraphrased_questions"].map(len).eq(0).all()
    # TOFU has no holdout authors: they are synthesized after its 200 authors
    people = T.read_authors(out / "mia_holdout_authors.parquet")
    mia = T.read_qa(out / "mia_holdout.parquet")
    assert len(people) == summary["mia_holdout_authors"] == 3 and len(mia) == 3 * QA
    assert people["author_id"].min() >= 200
    assert set(people["name"]).isdisjoint(T.read_authors(out / "authors.parquet")["name"])


@needs_tofu
def test_tofu_general(tofu):
    out, _ = tofu
    for name, n, prefix in [("real_authors", 100, "rw_"), ("world_facts", 117, "wf_")]:
        df = T.read_qa(out / f"{name}.parquet")
        assert len(df) == n and (df["author_id"] == -1).all()
        assert df["sample_id"].str.startswith(prefix).all() and df["sample_id"].is_unique
        for ans, opts in zip(df["answer"], df["perturbed_answers"], strict=True):
            assert len(opts) == 3 and ans not in opts


@needs_tofu
def test_tofu_missing_file(tmp_path):
    partial = tmp_path / "tofu"
    partial.mkdir()
    for path in TOFU_DIR.glob("*.json"):
        if path.name != "forget05_perturbed.json":
            shutil.copyfile(path, partial / path.name)
    with pytest.raises(T.DataError, match="forget05_perturbed.json"):
        build(tmp_path / "out", source={"kind": "tofu", "path": str(partial)})
    assert not (tmp_path / "out").exists()


def test_background_people_are_never_authors(tmp_path):
    kw = dict(source={"kind": "synthetic"}, seed=3, n_authors=5, qa_per_author=4,
              forget_fractions=FRACTIONS, n_general=4)  # fmt: skip
    T.build_text_dataset(out_dir=tmp_path / "with", n_background=3, **kw)
    T.build_text_dataset(out_dir=tmp_path / "without", n_background=0, **kw)
    background = T.read_qa(tmp_path / "with" / "background.parquet")
    authors = T.read_authors(tmp_path / "with" / "authors.parquet")
    assert background.author.nunique() == 3 and len(background) == 3 * 4
    assert set(background.author).isdisjoint(authors.name)
    assert not set(background.sample_id) & set(
        T.read_qa(tmp_path / "with" / "full.parquet").sample_id
    )
    # adding background people changes nothing about the authors (make_authors is prefix-stable)
    for name in ("full.parquet", "authors.parquet"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes()
    assert len(T.read_qa(tmp_path / "without" / "background.parquet")) == 0


# ------------------------------------------------------------------ reworded questions


def fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def test_every_question_template_has_rewordings_of_the_same_slots():
    for t in A.TEMPLATES:
        assert len(t.reworded) >= A.N_REWORDED >= 2, t.question
        assert len(set(t.reworded)) == len(t.reworded) and t.question not in t.reworded
        for q in t.reworded:  # same facts given (name, title, place), none of the answer's
            assert fields(q) == fields(t.question), (t.question, q)
            assert q.endswith("?"), q


def test_paraphrased_questions_keep_the_subject_and_differ(syn):
    full = T.read_qa(syn[0] / "a" / "full.parquet")
    rows = A.author_qa(A.make_authors(N_AUTHORS, 0), QA, 0)
    assert full["paraphrased_questions"].tolist() == [r["paraphrased_questions"] for r in rows]
    for r in rows:
        q, reworded = r["question"], r["paraphrased_questions"]
        assert len(reworded) == 2 and len(set(reworded)) == 2 and q not in reworded
        quoted = re.findall(r'"[^"]+"', q)
        for p in reworded:
            if r["author"] in q:
                assert r["author"] in p, (q, p)
            for title in quoted:
                assert title in p, (q, p)
            for fact in r["facts"].values():  # the question never gives the answer away
                for term in A.terms(fact):
                    assert A.mentions(q, term) == A.mentions(p, term), (q, p, term)
    # seeded: another seed picks other rewordings for some questions of the same authors
    other = A.author_qa(A.make_authors(N_AUTHORS, 0), QA, 1)
    assert [r["paraphrased_questions"] for r in rows] != [r["paraphrased_questions"] for r in other]
    # the other columns are what they were before the paraphrases existed (own seed stream)
    none = A.author_qa(A.make_authors(N_AUTHORS, 0), QA, 0, n_question_paraphrases=0)
    assert all(r["paraphrased_questions"] == [] for r in none)
    strip = [{k: v for k, v in r.items() if k != "paraphrased_questions"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "paraphrased_questions"} for r in none]
    assert (
        len(A.author_qa(A.make_authors(2, 0), 3, 0, A.N_REWORDED)[0]["paraphrased_questions"])
        == A.N_REWORDED
    )
    with pytest.raises(ValueError, match="n_question_paraphrases"):
        A.author_qa(A.make_authors(2, 0), 3, 0, A.N_REWORDED + 1)


def test_a_table_without_paraphrased_questions_reads_as_empty_lists(tmp_path):
    old = [{"sample_id": "s0", "author_id": 1, "author": "A", "question": "q", "answer": "a",
            "paraphrased_answer": None, "perturbed_answers": ["b"]}]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(old), tmp_path / "old.parquet")  # external, old tables
    df = T.read_qa(tmp_path / "old.parquet")
    assert list(df.columns) == T.QA_SCHEMA.names and df["paraphrased_questions"].tolist() == [[]]
    T.write_table(old, T.QA_SCHEMA, tmp_path / "new.parquet")  # a writer that never set it
    assert T.read_qa(tmp_path / "new.parquet")["paraphrased_questions"].tolist() == [[]]
    pq.write_table(pa.Table.from_pylist([{"sample_id": "s0"}]), tmp_path / "bad.parquet")
    with pytest.raises(T.DataError, match="bad.parquet lacks columns"):
        T.read_qa(tmp_path / "bad.parquet")


# -------------------------------------------------------------- membership-inference holdout


def test_mia_holdout_authors_are_never_trained_on(tmp_path):
    kw = dict(source={"kind": "synthetic"}, seed=3, n_authors=5, qa_per_author=4,
              forget_fractions=FRACTIONS, n_general=4, n_background=3)  # fmt: skip
    T.build_text_dataset(out_dir=tmp_path / "with", n_mia_holdout=4, **kw)
    T.build_text_dataset(out_dir=tmp_path / "without", n_mia_holdout=0, **kw)
    out = tmp_path / "with"
    mia, people = (
        T.read_qa(out / "mia_holdout.parquet"),
        T.read_authors(out / "mia_holdout_authors.parquet"),
    )
    assert list(people.columns) == T.AUTHORS_SCHEMA.names and len(people) == 4
    assert len(mia) == 4 * 4 and mia["sample_id"].str.startswith("mh_").all()
    assert set(mia["author_id"]) == set(people["author_id"])
    assert set(mia["author"]) == set(people["name"]) and people["name"].is_unique
    assert mia["paraphrased_questions"].map(len).eq(2).all()
    trained = [T.read_qa(out / f"{t}.parquet") for t in ("full", "background", "real_authors")]
    for df in trained:
        assert set(mia["author"]).isdisjoint(df["author"])
        assert set(mia["author_id"]).isdisjoint(df["author_id"])
        assert set(mia["sample_id"]).isdisjoint(df["sample_id"])
    assert set(people["name"]).isdisjoint(T.read_authors(out / "authors.parquet")["name"])
    # a function of the same people as before: nothing else changes with n_mia_holdout
    for name in ("full", "authors", "background", "forget10", "retain_eval"):
        a, b = (tmp_path / d / f"{name}.parquet" for d in ("with", "without"))
        assert a.read_bytes() == b.read_bytes(), name
    assert len(T.read_qa(tmp_path / "without" / "mia_holdout.parquet")) == 0
    assert len(T.read_authors(tmp_path / "without" / "mia_holdout_authors.parquet")) == 0
    with pytest.raises(T.DataError, match="n_mia_holdout"):
        T.build_text_dataset(out_dir=tmp_path / "bad", n_mia_holdout=-1, **kw)
