"""The TOFU files (a local folder, as exported from the Hub dataset) -> QA tables of the contract.

- full.json: 4000 QA, 20 per author, in author order, so author_id = index // 20. It holds only
  question and answer; paraphrased and perturbed answers come from the *_perturbed.json files
  (retain_perturbed: the first 20 authors; forgetXX: the last 1/5/10 % of authors), matched back
  to full.json by (question, answer), then by question alone.
- Author names: TOFU has no name column. The name is inferred as the most frequent capitalized
  multi-word phrase in the author's 20 questions, parentheses removed (right for 199 of 200);
  where no phrase occurs at least MIN_NAME_HITS times, the name is "author_{id:03d}" (author 88's
  QA call it only "the fictitious author").
- Rows of full.json without a perturbed-file counterpart get paraphrased_answer None and
  perturbed_answers [] (TOFU ships those only for its evaluation subsets). paraphrased_questions
  is [paraphrased_question] where the matched record has one (the perturbed files of the
  forget and retain subsets do), else [].
- A file may be one JSON array, JSON lines, or one array per line (how `datasets` exports it).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from clearbench.data.text import DataError

QA_PER_AUTHOR = 20
MIN_NAME_HITS = 5
_WORD = r"[A-Z][\w\-.'’]*"
_PHRASE = re.compile(rf"{_WORD}(?:\s+(?:(?:al|el|de|da|van|von|bin|le|la|du|del|der)\s+)?{_WORD})+")
_OPENERS = {
    "What",
    "Who",
    "How",
    "Which",
    "Can",
    "Could",
    "Are",
    "Is",
    "Has",
    "Have",
    "Did",
    "Does",
    "Do",
    "In",
    "When",
    "Where",
    "Why",
    "Was",
    "Were",
    "Please",
    "Tell",
    "The",
    "Would",
    "Name",
    "As",
    "Apart",
    "Besides",
    "Being",
    "Given",
    "Considering",
    "Aside",
    "Yes",
    "No",
    "Author",
    "Born",
}


def load_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"TOFU file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        pass
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"TOFU file {path} line {n} is not JSON: {e.msg}") from None
            records.extend(data if isinstance(data, list) else [data])
    return records


HUB_PREFIX = "hub:"


def records(source: str | Path, name: str) -> list[dict]:
    """One TOFU file's records from a local folder, or from the Hub for `hub:<dataset id>`.

    On the Hub each file is a config named like the file without `.json` (locuslab/TOFU).
    """
    source = str(source)
    if not source.startswith(HUB_PREFIX):
        return load_records(Path(source) / name)
    hub_id = source[len(HUB_PREFIX) :]
    try:
        from datasets import load_dataset

        return load_dataset(hub_id, name=name.removesuffix(".json"), split="train").to_list()
    except Exception as err:  # offline, unknown id or config: one line, not a traceback
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot load TOFU {name} from the Hub ({hub_id}): {first}") from None


def infer_name(texts: list[str], author_id: int) -> str:
    counts = Counter()
    for text in texts:
        for m in _PHRASE.finditer(re.sub(r"\s*\([^)]*\)", "", text)):
            words = m.group(0).split()
            while words and words[0] in _OPENERS:
                words = words[1:]
            phrase = re.sub(r"['’]s?$|\.$", "", " ".join(words))
            if len(phrase.split()) >= 2:
                counts[phrase] += 1
    best = counts.most_common(1)
    return best[0][0] if best and best[0][1] >= MIN_NAME_HITS else f"author_{author_id:03d}"


def perturbed(folder: str | Path, name: str, full: list[dict]) -> list[tuple[int, dict]]:
    """(index in full.json, record) for every record of one *_perturbed.json file."""
    by_pair, by_question = {}, {}
    for i, r in enumerate(full):
        by_pair.setdefault((r["question"], r["answer"]), i)
        by_question.setdefault(r["question"], i)
    out = []
    for r in records(folder, name):
        i = by_pair.get((r["question"], r["answer"]), by_question.get(r["question"]))
        if i is None:
            raise DataError(
                f"TOFU file {name} in {folder}: question not in full.json: {r['question'][:60]}"
            )
        out.append((i, r))
    return out


def reworded(record: dict) -> list[str]:
    """The record's paraphrased question as the contract's list ([] where it has none)."""
    q = record.get("paraphrased_question")
    return [q] if q else []


def options_rows(records: list[dict], prefix: str) -> list[dict]:
    """real_authors / world_facts: the answer and its wrong options; no paraphrase in TOFU."""
    rows = []
    for i, r in enumerate(records):
        wrong = r.get("perturbed_answer")
        if wrong is None:  # other exports list options; the wrong ones are those != answer
            wrong = [v for k, v in sorted(r.items()) if k.startswith("option") and v != r["answer"]]
        rows.append(
            {
                "sample_id": f"{prefix}_{i:03d}",
                "author_id": -1,
                "author": "",
                "question": r["question"],
                "answer": r["answer"],
                "paraphrased_answer": r.get("paraphrased_answer") or None,
                "perturbed_answers": list(wrong),
                "paraphrased_questions": reworded(r),
            }
        )
    return rows


def read_tofu(folder: str | Path, forget_names: list[str]) -> dict:
    """authors, full and retain_eval rows, forget author ids per split, real_authors, world_facts.

    `folder` is a local folder of TOFU json files or `hub:<dataset id>` (e.g. hub:locuslab/TOFU).
    """
    if not str(folder).startswith(HUB_PREFIX) and not Path(folder).is_dir():
        raise DataError(f"TOFU folder not found: {folder}")
    full = records(folder, "full.json")
    if not full or len(full) % QA_PER_AUTHOR:
        raise DataError(f"TOFU file full.json in {folder}: {len(full)} QA, not 20 per author")
    n_authors = len(full) // QA_PER_AUTHOR
    names = []
    for a in range(n_authors):
        qa = full[a * QA_PER_AUTHOR : (a + 1) * QA_PER_AUTHOR]
        names.append(infer_name([r["question"] for r in qa], a))
    rows = [
        {
            "sample_id": f"a{i // QA_PER_AUTHOR:03d}_q{i % QA_PER_AUTHOR:02d}",
            "author_id": i // QA_PER_AUTHOR,
            "author": names[i // QA_PER_AUTHOR],
            "question": r["question"],
            "answer": r["answer"],
            "paraphrased_answer": None,
            "perturbed_answers": [],
            "paraphrased_questions": [],
        }
        for i, r in enumerate(full)
    ]
    forget, retain_idx = {}, []
    for name in ["retain", *forget_names]:
        matched = perturbed(folder, f"{name}_perturbed.json", full)
        for i, r in matched:
            rows[i]["paraphrased_answer"] = r.get("paraphrased_answer") or None
            rows[i]["perturbed_answers"] = list(r.get("perturbed_answer", []))
            rows[i]["paraphrased_questions"] = reworded(r)
        if name == "retain":
            retain_idx = [i for i, _ in matched]
        else:
            forget[name] = sorted({i // QA_PER_AUTHOR for i, _ in matched})
    columns = [
        "gender",
        "birth_date",
        "birth_place",
        "ethnicity",
        "father_profession",
        "mother_profession",
        "genre",
        "books",
        "awards",
        "age",
    ]
    return {
        "authors": [
            {"author_id": a, "name": names[a]} | dict.fromkeys(columns) for a in range(n_authors)
        ],
        "full": rows,
        "forget": forget,
        "retain_eval": [rows[i] for i in retain_idx],
        "real_authors": options_rows(records(folder, "real_authors_perturbed.json"), "rw"),
        "world_facts": options_rows(records(folder, "world_facts_perturbed.json"), "wf"),
    }
