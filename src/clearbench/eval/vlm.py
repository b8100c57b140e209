"""Per-sample evaluation of a VLM (DESIGN section 6): the six tasks of the vlm track, and
`holdout` where the dataset has mia_holdout.parquet (the text and photo QA of authors no model
trains on, built as forget's; the non-members of the membership attack in metrics.text).

forget / retain      text QA and photo QA (photo + question) of the forget split's authors /
                     of retain_eval. Text QA: paraphrased and perturbed answers from the text
                     table. Photo QA: the photo's own (the published CLEAR's paraphrased and
                     perturbed captions) where it has them, else those of the text QA with its
                     sample_id; a photo with neither is left out
real_faces           face -> famous name, wrong names from the table
real_world           visual questions, wrong answers from the table
forget_facerec /     photo + seeded identification question -> the author's name; wrong
retain_facerec       options: the photo's published perturbed names where it has them, else a
                     seeded choice of other authors' names, as many as real_faces has

Every image sample is scored and generated *with* its image; image tokens are never scored.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from clearbench.compute import compute_hp
from clearbench.data.clear import PUBLISHED_PHOTOS, SCHEMAS
from clearbench.data.text import read_qa, read_table
from clearbench.eval.text import (
    by_length,
    contract_rows,
    greedy_decode,
    minkpp_per_row,
    option_pairs,
    pick_samples,
    scores_by_length,
    unevaluated,
    write_tasks,
)
from clearbench.models.factory import (
    load_image_processor,
    load_model,
    load_tokenizer,
    trusts_remote_code,
)
from clearbench.train.qa import answer_outputs
from clearbench.train.vlm import check_hp, id_question, read_photos
from clearbench.train.vqa import Sample, Vision, stable_rng

TASKS = ("forget", "retain", "real_faces", "real_world", "forget_facerec", "retain_facerec")
# The membership attack's non-members: QA (text and photo) of authors no model trains on. A
# seventh task where the dataset has it; in no Real/Retain/Forget group.
HOLDOUT, HOLDOUT_FILE = "holdout", "mia_holdout.parquet"
COLUMNS = ("sample_id", "question", "answer", "paraphrased_answer", "perturbed_answers", "image")


def _photo_rows(path) -> list[dict]:
    """The photos, with the published CLEAR's own paraphrase and wrong answers where present."""
    published = Path(path).is_file() and "perturbed_names" in pq.read_schema(path).names
    return read_table(path, PUBLISHED_PHOTOS if published else SCHEMAS["photos"]).to_dict("records")


def qa_task(text_path, photo_path) -> pd.DataFrame:
    """Text QA rows, then the same authors' photo QA. A photo's paraphrase and wrong answers are
    its own where it has them (the published CLEAR's paraphrased and perturbed captions), else
    its text QA's."""
    text = read_qa(text_path)
    by_id = text.set_index("sample_id")
    rows = [
        {**r, "sample_id": f"text:{r['sample_id']}", "image": None}
        for r in text[list(COLUMNS[:-1])].to_dict("records")
    ]
    for photo in _photo_rows(photo_path):
        if photo.get("perturbed_answers"):
            qa = photo
        elif photo["sample_id"] in by_id.index:
            qa = by_id.loc[photo["sample_id"]]
        else:
            continue  # nothing to score its truth ratio and probability against
        rows.append(
            {
                "sample_id": f"photo:{photo['sample_id']}",
                "question": photo["question"],
                "answer": photo["answer"],
                "paraphrased_answer": qa["paraphrased_answer"],
                "perturbed_answers": list(qa["perturbed_answers"]),
                "image": photo["image"]["bytes"],
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def facerec_task(photo_path, names: list[str], n_wrong: int, seed: int) -> pd.DataFrame:
    """Photo + seeded identification question -> the name. Wrong options: the published CLEAR's
    perturbed names where the photo has them, else a seeded choice of n_wrong other names."""
    rows = []
    for photo in _photo_rows(photo_path):
        wrong = photo.get("perturbed_names")
        if not wrong:
            others = [n for n in names if n != photo["name"]]
            wrong = stable_rng(seed, "options:" + photo["sample_id"]).choice(
                others, size=min(n_wrong, len(others)), replace=False
            )
        rows.append(
            {
                "sample_id": photo["sample_id"],
                "question": id_question(seed, photo["sample_id"]),
                "answer": photo["name"],
                "paraphrased_answer": None,
                "perturbed_answers": [str(w) for w in wrong],
                "image": photo["image"]["bytes"],
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def real_task(path, name: str) -> pd.DataFrame:
    df = read_table(path, SCHEMAS[name])
    df["paraphrased_answer"] = None
    df["image"] = [img["bytes"] for img in df["image"]]
    return df[list(COLUMNS)]


def task_tables(clear_dir, text_dir, split: str, seed: int) -> dict[str, pd.DataFrame]:
    clear, text = Path(clear_dir), Path(text_dir)
    real_faces = real_task(clear / "real_faces.parquet", "real_faces")
    n_wrong = max(map(len, real_faces["perturbed_answers"]))
    names = sorted({p["name"] for p in read_photos(clear / "full.parquet")})
    tasks = {
        "forget": qa_task(text / f"{split}.parquet", clear / f"{split}.parquet"),
        "retain": qa_task(text / "retain_eval.parquet", clear / "retain_eval.parquet"),
        "real_faces": real_faces,
        "real_world": real_task(clear / "real_world.parquet", "real_world"),
        "forget_facerec": facerec_task(clear / f"{split}.parquet", names, n_wrong, seed),
        "retain_facerec": facerec_task(clear / "retain_eval.parquet", names, n_wrong, seed),
    }
    holdout = (text / HOLDOUT_FILE, clear / HOLDOUT_FILE)
    if all(p.is_file() for p in holdout):  # datasets built before the holdout authors lack it
        tasks[HOLDOUT] = qa_task(*holdout)
    return tasks


@torch.no_grad()
def answer_scores(
    model, vision: Vision, samples: list[Sample], max_len: int, batch_size: int, minkpp_for=()
):
    """Mean answer-token NLL per sample (every option sees its image), and the Min-K%++ token
    scores of the samples whose index is in `minkpp_for` (None for the others)."""
    encoded = [vision.encode(s, max_len) for s in samples]
    minkpp_for = set(minkpp_for)

    def score(idx):
        batch = vision.collate([samples[i] for i in idx], [encoded[i] for i in idx])
        answers = answer_outputs(model, batch)  # the numbers of vqa.sequence_nll
        return answers.nll(), minkpp_per_row(answers, [i in minkpp_for for i in idx])

    return scores_by_length(encoded, batch_size, score)


def answer_losses(model, vision: Vision, samples: list[Sample], max_len: int, batch_size: int):
    """Mean answer-token NLL per sample (every option sees its image)."""
    return answer_scores(model, vision, samples, max_len, batch_size)[0]


@torch.no_grad()
def greedy_answers(model, vision: Vision, samples: list[Sample], max_new_tokens, batch_size):
    answers = [""] * len(samples)
    lengths = [len(vision.prompt_ids(s)) for s in samples]
    for idx in by_length(lengths, batch_size):
        batch = vision.prompt_batch([samples[i] for i in idx])
        for i, answer in zip(idx, greedy_decode(model, vision.tok, batch, max_new_tokens),
                             strict=True):  # fmt: skip
            answers[i] = answer
    return answers


def evaluate_task(model, vision: Vision, task: str, df: pd.DataFrame, hp: dict) -> pd.DataFrame:
    options, gt_index = option_pairs(df)
    samples = [Sample(row.question, option, row.image) for row, option in options]
    prompts = [Sample(row.question, "", row.image) for row in df.itertuples()]
    losses, minkpp = answer_scores(
        model, vision, samples, hp["max_len"], hp["batch_size"], gt_index
    )
    generations = greedy_answers(model, vision, prompts, hp["max_new_tokens"], hp["batch_size"])
    gt_minkpp = [minkpp[i] for i in gt_index]
    return contract_rows(task, df, iter(losses.tolist()), generations, gt_minkpp)


def evaluate_vlm(
    model_dir: str, clear_dir: str, text_dir: str, split: str, out_path: str, hp: dict
) -> dict:
    """The per-sample table of one VLM on its tasks (see task_tables); a diverged model gets an
    empty table."""
    check_hp(hp, "eval")
    if (skipped := unevaluated(model_dir, out_path)) is not None:
        return skipped
    tasks = task_tables(clear_dir, text_dir, split, hp["seed"])
    torch.manual_seed(hp["seed"])
    model, meta = load_model(model_dir, compute=compute_hp(hp))
    trust = trusts_remote_code(meta)
    tok, processor = load_tokenizer(meta["base"], trust), load_image_processor(meta["base"], trust)
    vision = Vision(tok, processor, model.config)
    tables = []
    for task, df in tqdm(tasks.items(), desc=f"eval {Path(model_dir).name}", leave=False):
        df = pick_samples(df, hp["max_samples"], hp["seed"])
        tables.append(evaluate_task(model, vision, task, df, hp))
    return write_tasks(tables, out_path)
