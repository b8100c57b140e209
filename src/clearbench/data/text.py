"""The text dataset: the QA table contract, deterministic splits, atomic Parquet writes.

QA table: sample_id, author_id (-1 for general knowledge), author ("" for general knowledge),
question, answer, paraphrased_answer (str or None), perturbed_answers (list[str]),
paraphrased_questions (list[str]: the question reworded, same meaning; [] where there is none:
general knowledge, TOFU rows without one, tables written before the column existed).

Splits: forgetXX holds every QA of the LAST max(1, round(frac * n_authors)) authors by author_id
(Python's round), as TOFU's forget01/05/10 hold its last 2/10/20 authors; so the forget sets are
nested and depend only on (n_authors, fractions). retainYY is the rest of full. retain_eval is
TOFU's retain_perturbed subset (its first 20 authors); for synthetic data it is, likewise, the
QA of the first authors outside the largest forget set, as many authors as that set has.

mia_holdout: the QA of n_mia_holdout fictitious authors no model ever trains on (not in full, not
background, not real_authors), the non-members of membership-inference attacks; their profiles
are mia_holdout_authors. They are synthesized with either source (TOFU has no such authors).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clearbench.io import atomic_path

QA_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("author_id", pa.int64()),
        ("author", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("paraphrased_answer", pa.string()),
        ("perturbed_answers", pa.list_(pa.string())),
        ("paraphrased_questions", pa.list_(pa.string())),
    ]
)
AUTHORS_SCHEMA = pa.schema(
    [
        ("author_id", pa.int64()),
        ("name", pa.string()),
        ("gender", pa.string()),
        ("birth_date", pa.string()),
        ("birth_place", pa.string()),
        ("ethnicity", pa.string()),
        ("father_profession", pa.string()),
        ("mother_profession", pa.string()),
        ("genre", pa.string()),
        ("books", pa.list_(pa.string())),
        ("awards", pa.list_(pa.string())),
        ("age", pa.int64()),
    ]
)
OBJECT_COLUMNS = (
    "paraphrased_answer",
    "perturbed_answers",
    "paraphrased_questions",
    "books",
    "awards",
)
OPTIONAL_COLUMNS = {"paraphrased_questions": list}  # column -> its default where a row lacks it


class DataError(ValueError):
    """A missing or malformed input file; the message is one line naming the path."""


def split_names(forget_fractions: dict[str, float]) -> list[tuple[str, str]]:
    """[("forget10", "retain90"), ...] in the dict's order."""
    pairs = []
    for name in forget_fractions:
        m = re.fullmatch(r"forget(\d\d)", name)
        if not m:
            raise ValueError(f"forget split names look like 'forget10', got {name!r}")
        pairs.append((name, f"retain{100 - int(m.group(1)):02d}"))
    return pairs


def forget_authors(author_ids: list[int], forget_fractions: dict[str, float]) -> dict[str, list]:
    ids = sorted(author_ids)
    out = {}
    for name, frac in forget_fractions.items():
        k = max(1, round(frac * len(ids)))
        if not 0 < frac < 1 or k >= len(ids):
            raise ValueError(f"{name}={frac} leaves no retain author among {len(ids)} authors")
        out[name] = ids[-k:]
    return out


def value(row: dict, column: str):
    """row[column], or the column's default where it is optional and the row lacks it."""
    if column not in row and column in OPTIONAL_COLUMNS:
        return OPTIONAL_COLUMNS[column]()
    return row[column]


def frame(rows: list[dict], schema: pa.Schema) -> pd.DataFrame:
    """The DataFrame form of a table: list columns as python lists, missing strings as None."""
    columns = {f.name: [value(r, f.name) for r in rows] for f in schema}
    df = pd.DataFrame(columns, columns=schema.names)
    for col in OBJECT_COLUMNS:
        if col in df:
            df[col] = pd.Series(columns[col], dtype=object, index=df.index)
    return df


def write_table(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    """Write to a temporary file, then rename: an interrupted run leaves no half-written file."""
    table = pa.Table.from_pylist([{f.name: value(r, f.name) for f in schema} for r in rows], schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, schema: pa.Schema) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"table not found: {path}")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:  # truncated, empty, not Parquet
        raise DataError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    missing = [c for c in schema.names if c not in table.column_names]
    if set(missing) - set(OPTIONAL_COLUMNS):
        raise DataError(f"{path} lacks columns {missing}")
    present = [c for c in schema.names if c not in missing]
    return frame(table.select(present).to_pylist(), schema)  # optional ones get their default


def read_qa(path: str | Path) -> pd.DataFrame:
    return read_table(path, QA_SCHEMA)


def read_authors(path: str | Path) -> pd.DataFrame:
    return read_table(path, AUTHORS_SCHEMA)


def synthetic_source(seed, n_authors, qa_per_author, n_general, n_question_paraphrases=2) -> dict:
    from clearbench.data.authors import author_qa, general_qa, make_authors

    authors = make_authors(n_authors, seed)
    real, world = general_qa(seed, n_general)
    return {
        "authors": authors,
        "full": author_qa(authors, qa_per_author, seed, n_question_paraphrases),
        "real_authors": real,
        "world_facts": world,
    }


def people_after(seed: int, n_known: int, n_background: int, n_mia: int):
    """(background people, mia holdout people): fictitious people generated after the n_known
    authors (make_authors is prefix-stable), so no name or author_id is ever shared."""
    from clearbench.data.authors import make_authors

    people = make_authors(n_known + n_background + n_mia, seed)[n_known:]
    return people[:n_background], people[n_background:]


def prefixed_qa(people, prefix, seed, qa_per_author, n_question_paraphrases) -> list[dict]:
    from clearbench.data.authors import author_qa

    if not people:
        return []
    rows = author_qa(people, qa_per_author, seed, n_question_paraphrases)
    return [{**r, "sample_id": prefix + r["sample_id"]} for r in rows]


def background_qa(
    seed: int, n_authors: int, n_background: int, qa_per_author: int, n_question_paraphrases=2
) -> list[dict]:
    """People the base model learns in pretraining and CLEAR never mentions.

    A tiny model trained from scratch has no idea how to bind a name to facts; a real base
    LLM learned that from the web. Pretraining on these people gives ours the same skill, so
    LoRA finetuning on the CLEAR authors only has to add new facts. They are generated after
    the CLEAR authors (make_authors is prefix-stable), so their names never collide.
    """
    people, _ = people_after(seed, n_authors, n_background, 0)
    return prefixed_qa(people, "bg_", seed, qa_per_author, n_question_paraphrases)


def mia_holdout(
    seed, n_authors, n_background, n_mia, qa_per_author, n_question_paraphrases=2
) -> tuple[list[dict], list[dict]]:
    """(profiles, QA) of the membership-inference holdout: n_mia fictitious authors after the
    CLEAR authors and the background people, whom no model trains on; sample ids "mh_...".
    """
    _, people = people_after(seed, n_authors, n_background, n_mia)
    return people, prefixed_qa(people, "mh_", seed, qa_per_author, n_question_paraphrases)


def build_text_dataset(
    source: dict,
    out_dir: str | Path,
    seed: int,
    n_authors: int,
    qa_per_author: int,
    forget_fractions: dict[str, float],
    n_general: int,
    n_background: int = 0,
    n_question_paraphrases: int = 2,
    n_mia_holdout: int = 3,
) -> dict:
    """Write authors, full, forgetXX/retainYY, retain_eval, real_authors, world_facts,
    background, mia_holdout and mia_holdout_authors (.parquet).

    source: {"kind": "synthetic"} or {"kind": "tofu", "path": folder}. For TOFU the author and
    QA counts come from the files, forgetXX from forgetXX_perturbed.json; n_general is ignored
    and n_question_paraphrases applies only to the synthesized people (TOFU's paraphrased
    questions are its own); background and mia_holdout people are synthesized after its authors,
    in this module's templates rather than TOFU's wording (a style difference a membership
    attack on TOFU could pick up; the local TOFU files have no holdout authors).
    """
    pairs = split_names(forget_fractions)
    for key, n in (("n_background", n_background), ("n_mia_holdout", n_mia_holdout)):
        if not isinstance(n, int) or n < 0:
            raise DataError(f"data.text.{key} must be an integer >= 0, got {n!r}")
    kind = source.get("kind")
    if kind == "synthetic":
        data = synthetic_source(seed, n_authors, qa_per_author, n_general, n_question_paraphrases)
        ids = [a["author_id"] for a in data["authors"]]
        forget = forget_authors(ids, forget_fractions)
        largest = max(forget.values(), key=len)
        eval_ids = set([a for a in ids if a not in largest][: len(largest)])
        data["retain_eval"] = [r for r in data["full"] if r["author_id"] in eval_ids]
    elif kind == "tofu":
        if not source.get("path"):
            raise DataError("TOFU source needs a folder: source.path is empty")
        from clearbench.data.tofu import read_tofu

        data = read_tofu(source["path"], list(forget_fractions))
        forget = data.pop("forget")
    else:
        raise DataError(f"unknown text source kind {kind!r} (synthetic | tofu)")

    tables = {"full": data["full"], "retain_eval": data["retain_eval"]}
    for forget_name, retain_name in pairs:
        ids = set(forget[forget_name])
        tables[forget_name] = [r for r in data["full"] if r["author_id"] in ids]
        tables[retain_name] = [r for r in data["full"] if r["author_id"] not in ids]
    tables["real_authors"] = data["real_authors"]
    tables["world_facts"] = data["world_facts"]
    n_known = max([r["author_id"] for r in data["full"]], default=-1) + 1
    n_qa = min(qa_per_author, 20)
    tables["background"] = background_qa(seed, n_known, n_background, n_qa, n_question_paraphrases)
    mia_people, tables["mia_holdout"] = mia_holdout(
        seed, n_known, n_background, n_mia_holdout, n_qa, n_question_paraphrases
    )
    # synthetic names never repeat; TOFU's names are its own, so check (a seed that clashes
    # would make a "never trained on" author a trained one)
    clash = {a["name"] for a in mia_people} & {a["name"] for a in data["authors"]}
    if clash:
        raise DataError(f"seed {seed}: mia holdout author {sorted(clash)[0]!r} is a known author")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_table(data["authors"], AUTHORS_SCHEMA, out / "authors.parquet")
    write_table(mia_people, AUTHORS_SCHEMA, out / "mia_holdout_authors.parquet")
    for name, rows in tables.items():
        write_table(rows, QA_SCHEMA, out / f"{name}.parquet")
    summary = {"source": kind, "authors": len(data["authors"])}
    summary |= {name: len(rows) for name, rows in tables.items()}
    summary |= {f"{name}_authors": len(ids) for name, ids in forget.items()}
    summary["mia_holdout_authors"] = len(mia_people)
    return summary
