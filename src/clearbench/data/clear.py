"""The CLEAR visual dataset (paper section 4.1 and App. B) as a library: `build_clear_dataset`.

1. Face pool: batches of 32 generator draws, the 8 best by quality kept, up to `n_pool` faces.
2. Age shift and attributes. The paper found its authors much older than its StyleGAN faces
   and closed the gap by editing faces older ("to generate a set of older people"): every pool
   face also goes through `age_shift` (age +5, glasses -10, the paper's strengths; parametric
   faces: its own best-of-32 edit candidates). Attributes (age, gender, ethnicity) are
   measured from the canonical image of both versions, as drawn and aged.
3. Matching. Each pool identity is a candidate in both versions; authors are assigned to
   identities by scipy's linear_sum_assignment on cost = min over the two versions of
   |age difference| in years, so one identity never serves two authors. Gender and ethnicity
   are hard constraints: an author only gets a face version measured as the author's gender
   and ethnicity class (`FACE_ETHNICITY`). The matched version is the final face, so the
   attributes measured again on the final portrait (faces.parquet, `summary["match"]`) are
   the matched ones.
4. Personalized photos: per text QA, the prompt `paper_prompt(author, qa)`, `n_candidates`
   candidates from the photo backend, the one the realism score ranks first (`best_of_n`), a
   caption from the scene and the chosen pose (the paper's captions came from GPT-4o).
5. Tables (Parquet, HF `datasets` Image columns), contact sheets and a data card.

Holdout for the vision track (paper App. E, DESIGN section 8): F = the authors of the largest
forget split, H = a seeded choice of as many other authors; vision_split.parquet gives every
author's role. real_faces and real_world are procedural here (the paper used MillionCelebs and
RealWorldQA; with backends.source=published `load_published_clear` maps the authors' own).

celebs, the vision track's pretraining identities, are synthesized with either source: the
paper's Celebs set was not published. `backends.celebs` picks the faces backend (parametric,
or stylegan2 from the stylegan2 section's network): n_celebs identities x celeb_images images.

`data.outputs.output_tables(source)` names the tables a build writes: the published dataset has no face
pool, so faces.parquet is synthesized data only. Both sources write data_card.md and
data_card.png (synthesized: author and face attribute plots; published: the tables' row counts,
photos per author and a sample of the photos).
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from clearbench.data import faces as F
from clearbench.data import scenes
from clearbench.data.authors import COUNTRIES, FACE_ETHNICITY, make_name
from clearbench.data.outputs import SHEETS
from clearbench.data.text import DataError, read_authors, read_qa, write_table
from clearbench.io import atomic_path, write_text_atomic

DEFAULTS = {
    "seed": 0,
    "n_pool": 400,  # paper: 2000 faces for 200 authors; the same 10 per author
    "pool_batch": 32,
    "pool_keep": 8,
    "n_candidates": 8,
    "image_size": 64,
    "face_fraction": scenes.FACE_FRACTION,
    "age_strength": 5.0,
    "glasses_strength": -10.0,
    "n_real_faces": 20,
    "real_face_images": 5,
    "n_real_world": 200,
    "n_celebs": 100,
    "celeb_images": 10,
    "n_options": 3,
    # celebs: the faces backend of the vision track's pretraining identities, in both sources
    "backends": {
        "faces": "parametric",
        "photos": "scenes",
        "source": "synthesize",
        "celebs": "parametric",
    },
    "stylegan2": {
        "network_pkl": None,
        "trust_pickle": False,
        "stylegan_dir": None,
        "age_direction": None,
        "glasses_direction": None,
    },
    "photomaker": {
        "base_model": "SG161222/RealVisXL_V4.0",
        "checkpoint": None,
        "device": "cuda",
        "steps": 50,
        "guidance_scale": 7.5,
        "style_strength": 0.5,
        "size": 1024,
    },
    "published": {"source": "therem/CLEAR"},
    "progress": True,
}
BACKENDS = {
    "faces": ("parametric", "stylegan2"),
    "photos": ("scenes", "photomaker"),
    "source": ("synthesize", "published"),
    "celebs": ("parametric", "stylegan2"),
}
REAL_FACES_QUESTION = "Who is the person in the image?"
OLD_AFTER = 60  # paper: "old" if the person is older than 60


class ClearDataError(DataError):
    """Bad input to the CLEAR builder; the message is one line naming the key or path."""


def _seed(*keys) -> int:
    """An independent 32-bit seed per stream (non-negative int keys)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def resolve_hp(hp: dict) -> dict:
    """DEFAULTS overlaid with hp (one level deep for dict values); unknown keys are errors."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in DEFAULTS.items()}
    for key, value in (hp or {}).items():
        if key not in DEFAULTS:
            raise ClearDataError(f"unknown CLEAR hyperparameter {key!r}")
        if isinstance(DEFAULTS[key], dict):
            extra = set(value or {}) - set(DEFAULTS[key])
            if extra:
                raise ClearDataError(f"unknown CLEAR hyperparameter {key}.{sorted(extra)[0]}")
            out[key].update(value or {})
        else:
            out[key] = value
    for kind, allowed in BACKENDS.items():
        if out["backends"][kind] not in allowed:
            raise ClearDataError(
                f"unknown backend backends.{kind}={out['backends'][kind]!r} ({' | '.join(allowed)})"
            )
    return out


# ------------------------------------------------------------------------------ prompts


def paper_prompt(author: dict, qa: dict) -> str:
    """The PhotoMaker prompt of one QA photo.

    CLEAR, App. B: "we replaced the first sentences as follows: "a real photo of a {old}
    {gender} called {name} img, showing face." where old is "old" if the person is older than
    60, "" otherwise; gender is "man" or "woman" according to the person's gender, and name is
    the person's name." Their example: "a real photo of an old man called Jaime Vasquez img,
    showing his face. Include his birth date, ..."

    The template is kept word for word, with the two repairs the example shows: "an" before
    "old", and no double space when {old} is empty. The age is the author's `age` column. The
    setting sentences (GPT-4o's in the paper) come from `scenes.setting_sentences`.
    """
    old = author["age"] > OLD_AFTER
    gender = "man" if author["gender"] == "male" else "woman"
    person = f"an old {gender}" if old else f"a {gender}"
    setting = scenes.setting_sentences(scenes.setting_for(author, qa))
    return f"a real photo of {person} called {author['name']} img, showing face. {setting}"


# --------------------------------------------------------------------------- candidates


def candidate_seeds(seed: int, n: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(n)]


def best_of_n(generate: Callable, score: Callable, prompt: str, n: int, seed: int):
    """Generate n candidates of one prompt, keep the best: (image, score, index).

    Candidate i is generate(prompt, candidate_seeds(seed, n)[i]). Ties go to the first; a NaN
    score never wins (unless every score is NaN). The paper: 8 samples per (prompt, face),
    "evaluate them using an ensemble of fake-detection models, and select the most realistic".
    """
    if n < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n}")
    best = None
    for i, s in enumerate(candidate_seeds(seed, n)):
        img = generate(prompt, s)
        value = float(score(img))
        rank = -math.inf if math.isnan(value) else value
        if best is None or rank > best[3]:
            best = (img, value, i, rank)
    return best[:3]


# -------------------------------------------------------------------------------- faces


class ParametricFaces:
    """The default face source (data/faces.py): pool, edits, portraits, attributes."""

    def __init__(self, size):
        self.size = size

    def pool(self, n, seed, batch, keep):
        z, _, info = F.sample_face_pool(
            n, seed, batch=batch, keep=keep, size=self.size, return_info=True
        )
        imgs = [
            im if d is None else self.portrait(zi)
            for zi, im, d in zip(z, info["images"], info["defects"], strict=True)
        ]
        return z, imgs

    def age_shift(self, z, seed, age_strength, glasses_strength, batch, keep):
        if len(z) == 0:
            return np.zeros((0, F.LATENT_DIM))
        return F.age_shift(
            z, seed, age_strength, glasses_strength, batch=batch, keep=keep, size=self.size
        )[0]

    def portrait(self, z):
        return F.render_face(z, self.size)

    def attributes(self, img):
        return F.face_attributes(img)


FORBIDDEN = 1e9  # the cost of a pair of different gender or ethnicity: above any assignment


def face_group(person: dict) -> str:
    """'gender/ethnicity' in the face attribute classes (authors' ethnicities mapped to them)."""
    return f"{person['gender']}/{FACE_ETHNICITY.get(person['ethnicity'], person['ethnicity'])}"


def match_cost(authors: list[dict], face_attrs: list[dict]) -> np.ndarray:
    """(authors x faces) cost: |age difference| in years, FORBIDDEN unless the groups agree."""
    cost = np.abs(np.array([[a["age"]] for a in authors]) - [f["age"] for f in face_attrs])
    same = [[face_group(a) == face_group(f) for f in face_attrs] for a in authors]
    return np.where(same, cost, FORBIDDEN)


def match_authors(authors, attrs_drawn, attrs_aged):
    """Optimal assignment of authors to pool identities, each in its better version.

    Every author gets a face version of their gender and ethnicity (else ClearDataError).
    Returns face index per author, aged flag per author, and the age differences.
    """
    drawn, aged = match_cost(authors, attrs_drawn), match_cost(authors, attrs_aged)
    if len(authors) > drawn.shape[1]:
        raise ClearDataError(f"n_pool={drawn.shape[1]} is smaller than the {len(authors)} authors")
    best = np.minimum(drawn, aged)
    rows, cols = linear_sum_assignment(best)
    if (best[rows, cols] >= FORBIDDEN).any():
        raise ClearDataError(_pool_shortage(authors, attrs_drawn, attrs_aged))
    order = np.argsort(rows)
    rows, cols = rows[order], cols[order]
    return cols, aged[rows, cols] < drawn[rows, cols], best[rows, cols]


def _match_mia_holdout(people, attrs_drawn, attrs_aged, taken):
    """(pool identity, aged flag) per mia holdout author, matched like the authors but among the
    identities no CLEAR author has (after them, so the CLEAR authors' faces stay as they are)."""
    if not people:
        return [], []
    free = np.array(sorted(set(range(len(attrs_drawn))) - {int(i) for i in taken}), dtype=int)
    if len(free) < len(people):
        raise ClearDataError(
            f"data.clear.n_pool: {len(free)} pool faces are left after the authors for the "
            f"{len(people)} mia holdout authors; raise n_pool"
        )
    try:
        idx, aged, _ = match_authors(
            people, [attrs_drawn[i] for i in free], [attrs_aged[i] for i in free]
        )
    except ClearDataError as err:
        raise ClearDataError(f"mia holdout authors: {err}") from None
    return [int(i) for i in free[idx]], [bool(a) for a in aged]


def _pool_shortage(authors, attrs_drawn, attrs_aged) -> str:
    """The one-line error for a pool that cannot give every author a face of their group."""
    need = Counter(face_group(a) for a in authors)
    versions = zip(attrs_drawn, attrs_aged, strict=True)
    have = Counter(g for pair in versions for g in {face_group(f) for f in pair})
    short = [g for g in sorted(need) if have[g] < need[g]]
    if not short:  # enough faces per group, but some would have to serve two groups
        problem = "cannot give every author a face of their gender and ethnicity"
    else:
        problem = f"has {have[short[0]]} {short[0]} faces for {need[short[0]]} {short[0]} authors"
    return f"data.clear.n_pool: the face pool {problem}; raise n_pool"


# -------------------------------------------------------------------------------- tables

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
S, I64, F64, STRS = pa.string(), pa.int64(), pa.float64(), pa.list_(pa.string())
SCHEMAS = {
    "faces": pa.schema(
        [
            ("author_id", I64),
            ("name", S),
            ("face_latent", pa.list_(F64)),
            ("face_age", F64),
            ("face_gender", S),
            ("face_ethnicity", S),
            ("match_cost", F64),
            ("image", IMAGE),
        ]
    ),
    "photos": pa.schema(
        [
            ("sample_id", S),
            ("author_id", I64),
            ("name", S),
            ("question", S),
            ("answer", S),
            ("prompt", S),
            ("caption", S),
            ("image", IMAGE),
        ]
    ),
    "vision_split": pa.schema([("author_id", I64), ("role", S)]),
    "real_faces": pa.schema(
        [
            ("sample_id", S),
            ("celeb_id", I64),
            ("name", S),
            ("question", S),
            ("answer", S),
            ("perturbed_answers", STRS),
            ("image", IMAGE),
        ]
    ),
    "real_world": pa.schema(
        [
            ("sample_id", S),
            ("question", S),
            ("answer", S),
            ("perturbed_answers", STRS),
            ("image", IMAGE),
        ]
    ),
    "celebs": pa.schema([("sample_id", S), ("identity", I64), ("image", IMAGE)]),
}
# The published CLEAR's photo tables also carry the authors' own evaluation answers (its
# *_perturbed configs): the caption's paraphrase and wrong captions, and wrong names.
PUBLISHED_PHOTOS = pa.schema(
    [
        *SCHEMAS["photos"],
        ("paraphrased_answer", S),
        ("perturbed_answers", STRS),
        ("perturbed_names", STRS),
    ]
)


def _hf_feature(t: pa.DataType) -> dict:
    if t == IMAGE:
        return {"_type": "Image"}
    if pa.types.is_list(t):
        return {"feature": _hf_feature(t.value_type), "_type": "Sequence"}
    return {"dtype": {"int64": "int64", "double": "float64"}.get(str(t), str(t)), "_type": "Value"}


def with_hf_metadata(schema: pa.Schema) -> pa.Schema:
    """The schema plus the `huggingface` metadata that makes datasets decode Image columns."""
    features = {f.name: _hf_feature(f.type) for f in schema}
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def png(img, name=None) -> dict:
    """{bytes, path}: PIL's PNG encoding (no timestamp chunks: same pixels, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": name}


def write_parquet(rows, schema: pa.Schema, path: Path) -> None:
    """rows (list of dicts or a DataFrame) -> Parquet, atomically (temp file + os.replace)."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    write_table(rows, with_hf_metadata(schema), path)


def decode(image: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("RGB"))


# -------------------------------------------------------------------------------- build


def _read_text(text_dir: Path):
    if not text_dir.is_dir():
        raise ClearDataError(f"text dataset folder not found: {text_dir}")
    authors = read_authors(text_dir / "authors.parquet")
    full = read_qa(text_dir / "full.parquet")
    splits = {}
    for path in sorted(text_dir.glob("*.parquet")):
        if re.fullmatch(r"(forget|retain)\d\d|retain_eval", path.stem):
            splits[path.stem] = read_qa(path)
    if not any(name.startswith("forget") for name in splits):
        raise ClearDataError(f"no forgetXX.parquet in the text dataset folder {text_dir}")
    return authors, full, splits


def _read_mia_holdout(text_dir: Path):
    """(authors, QA) of the membership-inference holdout; empty where the text dataset has none
    (written before it existed): then mia_holdout.parquet is an empty table."""
    people, qa = text_dir / "mia_holdout_authors.parquet", text_dir / "mia_holdout.parquet"
    if not people.is_file() and not qa.is_file():
        empty = pd.DataFrame(columns=["author_id", "name"])
        return empty, pd.DataFrame(columns=["sample_id", "author_id"])
    return read_authors(people), read_qa(qa)


ROLES = ("forget", "holdout", "other")


def vision_roles(author_ids, forget_ids, seed) -> dict:
    """author_id -> forget | holdout | other: H is a seeded choice of |F| non-forget authors."""
    forget = sorted(set(forget_ids))
    rest = sorted(set(author_ids) - set(forget))
    rng = np.random.default_rng(_seed(seed, 4))
    holdout = set(rng.choice(rest, size=min(len(forget), len(rest)), replace=False).tolist())
    return {
        a: "forget" if a in forget else "holdout" if a in holdout else "other"
        for a in sorted(author_ids)
    }


def build_clear_dataset(text_dir, out_dir, hp: dict) -> dict:
    """Write the CLEAR visual tables, contact sheets and data card into out_dir; return a summary.

    Tables: faces (synthesized data only), full, forgetXX/retainYY (+ retain_eval) with the text
    splits' sample ids, holdout, vision_split, real_faces, real_world, celebs (.parquet); then
    data_card.md and data_card.png (data.outputs). Synthesized data only: mia_holdout (photos of
    the text dataset's mia holdout authors, whom no model trains on) and forgetXX_probe (a new
    photo per forget QA, never trained on; see _photos). hp: see DEFAULTS.
    """
    hp = resolve_hp(hp)
    text_dir, out = Path(text_dir), Path(out_dir)
    authors, full, splits = _read_text(text_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if hp["backends"]["source"] == "published":
        from clearbench.data.backends import load_published_clear

        tables = load_published_clear(hp["published"]["source"], authors, {"full": full, **splits})
        lacking = sorted(set(splits) - set(tables))
        if lacking:  # the clear_data rule declares one table per text split
            forgets = ", ".join(n for n in tables if re.fullmatch(r"forget\d\d", n))
            raise ClearDataError(
                f"data.forget_fractions: the published CLEAR has no {lacking[0]} (it has {forgets})"
            )
        t1 = time.perf_counter()
        tables["celebs"] = _celebs(hp)
        summary, card = {"source": "published"}, None
        summary["celebs"] = {
            "backend": hp["backends"]["celebs"],
            "identities": hp["n_celebs"],
            "images_per_identity": hp["celeb_images"],
            "image_size": hp["image_size"],
        }
        summary["timings_s"] = {"celebs": round(time.perf_counter() - t1, 2)}
        # no renderer draws these authors like the published photos: a photo of another kind
        # would give membership inference a style cue, not a membership signal
        summary["mia_holdout"] = "not written: the published CLEAR has no photos of them"
    else:
        tables, summary, card = _synthesize(authors, full, splits, hp, text_dir)
    largest = max((n for n in splits if n.startswith("forget")), key=lambda n: int(n[6:]))
    roles = vision_roles(authors["author_id"].tolist(), splits[largest]["author_id"], hp["seed"])
    tables["vision_split"] = pd.DataFrame({"author_id": list(roles), "role": list(roles.values())})
    if "full" in tables:
        photos = tables["full"]
        held = [a for a, r in roles.items() if r == "holdout"]
        tables["holdout"] = photos[photos["author_id"].isin(held)]
    for name, df in tables.items():
        schema = SCHEMAS["photos" if name not in SCHEMAS else name]
        if "perturbed_names" in df:
            schema = PUBLISHED_PHOTOS
        write_parquet(df, schema, out / f"{name}.parquet")
    summary["tables"] = {name: len(df) for name, df in tables.items()}
    summary["vision_split"] = {
        "forget_split": largest,
        "holdout_seed_stream": 4,
        **{r: sum(v == r for v in roles.values()) for r in ROLES},
    }
    write_report(out, tables, summary, card)
    summary.setdefault("timings_s", {})["total"] = round(time.perf_counter() - t0, 2)
    return summary


def _face_source(hp):
    if hp["backends"]["faces"] == "parametric":
        return ParametricFaces(hp["image_size"])
    from clearbench.data.backends import StyleGANFaces

    return StyleGANFaces(**hp["stylegan2"])


def _synthesize(authors, full, splits, hp, text_dir):
    seed, quiet = hp["seed"], not hp["progress"]
    if hp["backends"]["faces"] == "stylegan2" and hp["backends"]["photos"] == "scenes":
        raise ClearDataError(
            "backends.photos=scenes draws parametric faces; with "
            "backends.faces=stylegan2 use backends.photos=photomaker"
        )
    needed = ["gender", "age", "ethnicity", "birth_date", "birth_place", "genre", "books", "awards"]
    empty = [c for c in needed if authors[c].isna().any()]
    if empty:
        raise ClearDataError(
            f"authors.parquet has empty {', '.join(empty)} (a TOFU text source leaves them "
            "empty): synthesis needs them; use backends.source=published or fill them in"
        )
    timings, clock = {}, [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 2)
        clock[0] = now

    source = _face_source(hp)
    batch, keep = hp["pool_batch"], hp["pool_keep"]
    z_pool, pool_imgs = source.pool(hp["n_pool"], _seed(seed, 1), batch, keep)
    lap("pool")
    strengths = hp["age_strength"], hp["glasses_strength"]
    z_aged = source.age_shift(z_pool, _seed(seed, 2), *strengths, batch, keep)
    lap("age_shift")
    attrs_drawn = [
        source.attributes(im) for im in tqdm(pool_imgs, "face attributes", disable=quiet)
    ]
    attrs_aged = [
        source.attributes(source.portrait(z))
        for z in tqdm(z_aged, "aged attributes", disable=quiet)
    ]
    lap("attributes")
    recs = authors.to_dict("records")
    idx, aged, cost = match_authors(recs, attrs_drawn, attrs_aged)
    final = np.where(aged[:, None], z_aged[idx], z_pool[idx]).astype(np.float64)
    portraits = [source.portrait(z) for z in final]
    attrs = [source.attributes(p) for p in portraits]
    lap("match")
    faces = pd.DataFrame(
        {
            "author_id": authors["author_id"],
            "name": authors["name"],
            "face_latent": [z.tolist() for z in final],
            "face_age": [a["age"] for a in attrs],
            "face_gender": [a["gender"] for a in attrs],
            "face_ethnicity": [a["ethnicity"] for a in attrs],
            "match_cost": cost,
            "image": [
                png(p, f"face_{a:03d}.png")
                for a, p in zip(authors["author_id"], portraits, strict=True)
            ],
        }
    )
    photos, photo_stats = _photos(recs, full, final, portraits, hp)
    lap("photos")
    tables = {"faces": faces, "full": photos}
    for name, qa in splits.items():
        tables[name] = photos[photos["sample_id"].isin(set(qa["sample_id"]))]
    forgets = [n for n in splits if re.fullmatch(r"forget\d\d", n)]
    asked = set().union(*(splits[n]["sample_id"] for n in forgets))  # nested: one photo per QA
    probes, _ = _photos(recs, full[full["sample_id"].isin(asked)], final, portraits, hp, True)
    for name in forgets:
        tables[f"{name}_probe"] = probes[probes["sample_id"].isin(set(splits[name]["sample_id"]))]
    lap("probe_photos")
    mia_authors, mia_qa = _read_mia_holdout(text_dir)
    mia_recs = mia_authors.to_dict("records")
    mia_idx, mia_aged = _match_mia_holdout(mia_recs, attrs_drawn, attrs_aged, idx)
    mia_final = [
        np.asarray(z_aged[i] if a else z_pool[i], dtype=np.float64)
        for i, a in zip(mia_idx, mia_aged, strict=True)
    ]
    mia_portraits = [source.portrait(z) for z in mia_final]
    tables["mia_holdout"], _ = _photos(mia_recs, mia_qa, mia_final, mia_portraits, hp)
    lap("mia_holdout")
    taken = set(authors["name"])
    if (text_dir / "background.parquet").is_file():
        taken |= set(read_qa(text_dir / "background.parquet")["author"])
    tables["real_faces"] = _real_faces(hp, taken)
    tables["celebs"] = _celebs(hp)
    tables["real_world"] = pd.DataFrame(_real_world(hp), columns=SCHEMAS["real_world"].names)
    lap("real_faces_celebs_real_world")
    author_eth = [FACE_ETHNICITY.get(a["ethnicity"], a["ethnicity"]) for a in recs]
    summary = {
        "source": "synthesize",
        "backends": hp["backends"],
        "n_candidates": hp["n_candidates"],
        "authors": len(recs),
        "photos": len(photos),
        "pool": len(z_pool),
        "match": {
            "mean_abs_age_diff": round(
                float(
                    np.mean([abs(a["age"] - f["age"]) for a, f in zip(recs, attrs, strict=True)])
                ),
                2,
            ),
            "gender_agreement": round(
                float(
                    np.mean([a["gender"] == f["gender"] for a, f in zip(recs, attrs, strict=True)])
                ),
                4,
            ),
            "ethnicity_agreement": round(
                float(
                    np.mean([e == f["ethnicity"] for e, f in zip(author_eth, attrs, strict=True)])
                ),
                4,
            ),
            "aged_share": round(float(np.mean(aged)), 4),
        },
        "realism": photo_stats,
        "timings_s": timings,
        "pool_index": [int(i) for i in idx],  # the face pool identity of each author
        "mia_holdout": {
            "authors": len(mia_recs),
            "photos": len(tables["mia_holdout"]),
            "pool_index": [int(i) for i in mia_idx],
        },
    }
    card = {
        "author_age": [a["age"] for a in recs],
        "pool_age": [a["age"] for a in attrs_drawn],
        "aged_pool_age": [a["age"] for a in attrs_aged],
        "face_age": [a["age"] for a in attrs],
        "author_gender": [a["gender"] for a in recs],
        "face_gender": [a["gender"] for a in attrs],
        "author_ethnicity": author_eth,
        "face_ethnicity": [a["ethnicity"] for a in attrs],
        "author_info": {
            a["author_id"]: f"{a['age']}, {a['gender']}, {e}"
            for a, e in zip(recs, author_eth, strict=True)
        },
    }
    return tables, summary, card


PHOTO_STREAM, PROBE_STREAM = 3, 11  # seed streams of the training photos and the probe photos


def _photos(recs, full, latents, portraits, hp, probe=False):
    """One best-of-n photo per text QA (the photo backend's generate and score).

    probe=True: a new photo of the same face for the same QA, never a training image: its
    candidates come from their own seed stream (pose, lighting, expression) and its scene from
    a layout key of its own (backdrop colours, skyline, where the person stands), while the
    QA still decides what the scene shows.
    """
    by_id = {a["author_id"]: (a, z, p) for a, z, p in zip(recs, latents, portraits, strict=True)}
    stream, suffix = (PROBE_STREAM, "_probe") if probe else (PHOTO_STREAM, "")
    n, size, backend = hp["n_candidates"], hp["image_size"], hp["backends"]["photos"]
    if backend == "photomaker":
        from clearbench.data.backends import PhotoMakerBackend, sharpness_score

        maker, personal = PhotoMakerBackend(**hp["photomaker"]), {}
    rows, drawn_bad, chosen_bad, scores = [], 0, 0, []
    for qa in tqdm(full.to_dict("records"), "photos", disable=not hp["progress"]):
        if qa["author_id"] not in by_id:
            raise ClearDataError(
                f"QA {qa['sample_id']} names author_id {qa['author_id']} "
                "missing from authors.parquet"
            )
        author, z, portrait = by_id[qa["author_id"]]
        setting = scenes.setting_for(author, {**qa, "sample_id": qa["sample_id"] + suffix})
        prompt = paper_prompt(author, qa)
        seed = _seed(hp["seed"], stream, zlib.crc32(qa["sample_id"].encode()))
        if backend == "scenes":
            gen = scenes.ScenePhotographer(z, setting, size, hp["face_fraction"])
            img, score, k = best_of_n(gen, gen.score, prompt, n, seed)
            draws = [gen.draw(s) for s in candidate_seeds(seed, n)]
            drawn_bad += sum(d[1] is not None for d in draws)
            chosen_bad += draws[k][1] is not None
            text = scenes.caption(setting, draws[k][0])
        else:
            if author["author_id"] not in personal:
                personal[author["author_id"]] = maker.generator([portrait])
            img, score, k = best_of_n(
                personal[author["author_id"]], sharpness_score, prompt, n, seed
            )
            text = scenes.caption(setting)
        scores.append(score)
        rows.append(
            {
                "sample_id": qa["sample_id"],
                "author_id": author["author_id"],
                "name": author["name"],
                "question": qa["question"],
                "answer": qa["answer"],
                "prompt": prompt,
                "caption": text,
                "image": png(img, f"{qa['sample_id']}{suffix}.png"),
            }
        )
    stats = {"mean_chosen_score": round(float(np.mean(scores)), 4) if scores else None}
    if backend == "scenes" and rows:
        stats |= {
            "candidates_defective": round(drawn_bad / (n * len(rows)), 4),
            "chosen_defective": round(chosen_bad / len(rows), 4),
        }
    return pd.DataFrame(rows, columns=SCHEMAS["photos"].names), stats


def _locale(rng, face_ethnicity):
    """A Faker locale of a country where people with this face ethnicity live (authors.py)."""
    countries = [
        c for c, v in COUNTRIES.items() if any(FACE_ETHNICITY[e] == face_ethnicity for e in v[2])
    ] or list(COUNTRIES)
    return COUNTRIES[countries[rng.integers(len(countries))]][0]


def _real_faces(hp, taken):
    """Famous people the base model learns in pretraining: never authors, never celebs."""
    n, k, seed = hp["n_real_faces"], hp["real_face_images"], hp["seed"]
    if n == 0:
        return pd.DataFrame(columns=SCHEMAS["real_faces"].names)
    faces = ParametricFaces(hp["image_size"])
    z, imgs = faces.pool(n, _seed(seed, 5), hp["pool_batch"], hp["pool_keep"])
    attrs = [faces.attributes(im) for im in imgs]
    rng = np.random.default_rng(_seed(seed, 7))
    taken = set(taken)
    names = [make_name(rng, _locale(rng, a["ethnicity"]), a["gender"], taken) for a in attrs]
    rows = []
    for c, (zc, name, a) in enumerate(zip(z, names, attrs, strict=True)):
        same = [
            m for m, b in zip(names, attrs, strict=True) if m != name and b["gender"] == a["gender"]
        ]
        other = [m for m, b in zip(names, attrs, strict=True) if b["gender"] != a["gender"]]
        ranked = [same[i] for i in rng.permutation(len(same))] + [
            other[i] for i in rng.permutation(len(other))
        ]
        for j, img in enumerate(
            F.render_identity_images(zc, k, _seed(seed, 6, c), hp["image_size"])
        ):
            sid = f"rf{c:03d}_{j:02d}"
            rows.append(
                {
                    "sample_id": sid,
                    "celeb_id": c,
                    "name": name,
                    "question": REAL_FACES_QUESTION,
                    "answer": name,
                    "perturbed_answers": ranked[: hp["n_options"]],
                    "image": png(img, f"{sid}.png"),
                }
            )
    return pd.DataFrame(rows, columns=SCHEMAS["real_faces"].names)


def _celebs(hp):
    """The vision track's biometric pretraining identities (the paper's Celebs, not published):
    n_celebs identities x celeb_images images at image_size, from the backends.celebs faces."""
    n, k, seed, size = hp["n_celebs"], hp["celeb_images"], hp["seed"], hp["image_size"]
    if n == 0:
        return pd.DataFrame(columns=SCHEMAS["celebs"].names)
    batch, keep = hp["pool_batch"], hp["pool_keep"]
    if hp["backends"]["celebs"] == "parametric":
        z, _ = F.sample_face_pool(n, _seed(seed, 9), batch=batch, keep=keep, size=size)
        identities = (
            F.render_identity_images(zi, k, _seed(seed, 10, i), size) for i, zi in enumerate(z)
        )
    else:
        from clearbench.data.backends import StyleGANCelebs

        identities = StyleGANCelebs(size, **hp["stylegan2"]).identities(
            n, k, _seed(seed, 9), lambda i: _seed(seed, 10, i), batch, keep
        )
    rows = []
    for i, images in enumerate(tqdm(identities, "celebs", total=n, disable=not hp["progress"])):
        for j, img in enumerate(images):
            rows.append(
                {
                    "sample_id": f"cb{i:04d}_{j:02d}",
                    "identity": i,
                    "image": png(img, f"cb{i:04d}_{j:02d}.png"),
                }
            )
    return pd.DataFrame(rows, columns=SCHEMAS["celebs"].names)


def _real_world(hp):
    for i in range(hp["n_real_world"]):
        rng = np.random.default_rng(_seed(hp["seed"], 8, i))
        img, q, a, options = scenes.vqa_scene(rng, hp["image_size"], hp["n_options"])
        yield {
            "sample_id": f"rw{i:04d}",
            "question": q,
            "answer": a,
            "perturbed_answers": options,
            "image": png(img, f"rw{i:04d}.png"),
        }


# ------------------------------------------------------------------------------- report


def contact_sheet(items, path, title, ncols=8, scale=2, max_items=48):
    """A grid PNG of (image, heading, text) cells: the image, a bold heading, wrapped text."""
    from PIL import ImageDraw, ImageFont

    items = items[:max_items]
    if not items:
        return None
    font, bold = ImageFont.load_default(size=10), ImageFont.load_default(size=11)
    h, w = items[0][0].shape[:2]
    cell_w = max(w * scale, 150) + 8
    wrapped = [_wrap(str(text), font, cell_w - 10)[:6] for _, _, text in items]
    line_h = 12
    cell_h = h * scale + 20 + line_h * max(len(lines) for lines in wrapped)
    nrows = math.ceil(len(items) / ncols)
    sheet = Image.new("RGB", (ncols * cell_w, 24 + nrows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), title, fill="black", font=ImageFont.load_default(size=14))
    for i, (img, heading, _) in enumerate(items):
        r, c = divmod(i, ncols)
        x, y = c * cell_w + 4, 24 + r * cell_h
        tile = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize(
            (w * scale, h * scale), Image.NEAREST
        )
        sheet.paste(tile, (x + (cell_w - 8 - w * scale) // 2, y))
        draw.text((x, y + h * scale + 2), str(heading), fill="black", font=bold)
        for j, text_line in enumerate(wrapped[i]):
            draw.text((x, y + h * scale + 16 + j * line_h), text_line, fill=(60, 60, 60), font=font)
    sheet.save(path)
    return path


def _wrap(text, font, width):
    lines, line = [], ""
    for word in text.split():
        if line and font.getlength(f"{line} {word}") > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def _sheet_items(df, heading, text):
    return [(decode(r["image"]), heading(r), text(r)) for r in df.to_dict("records")]


def write_report(out: Path, tables: dict, summary: dict, card: dict | None):
    """Contact sheets per split, data_card.md and data_card.png (card: the synthesized data's
    attributes; None for published data, whose plot shows its tables and photos instead)."""
    sheets = []
    photo_text = (lambda r: r["name"], lambda r: r["caption"])
    if "faces" in tables:
        faces = tables["faces"]
        who = (card or {}).get("author_info", {})
        sheets.append(
            (
                "faces",
                faces,
                lambda r: r["name"],
                lambda r: (
                    f"author: {who.get(r['author_id'], '?')}; face: {r['face_age']:.0f}, "
                    f"{r['face_gender']}, {r['face_ethnicity']}"
                ),
            )
        )
    for name in sorted(tables):
        if re.fullmatch(r"forget\d\d(_probe)?|holdout|mia_holdout", name):
            sheets.append((name, tables[name], *photo_text))
    retains = sorted(n for n in tables if re.fullmatch(r"retain\d\d", n))
    if retains:
        df = tables[retains[0]]
        sample = df.sample(n=min(32, len(df)), random_state=0) if len(df) else df
        sheets.append((f"{retains[0]}_sample", sample, *photo_text))
    if "real_faces" in tables:
        sheets.append(
            (
                "real_faces",
                tables["real_faces"],
                lambda r: r["name"],
                lambda r: "not: " + ", ".join(r["perturbed_answers"]),
            )
        )
    if "real_world" in tables:
        sheets.append(
            ("real_world", tables["real_world"], lambda r: r["answer"], lambda r: r["question"])
        )
    if "celebs" in tables:
        celebs = tables["celebs"]
        celebs = celebs[celebs.groupby("identity").cumcount() < 4]  # 4 images of each identity
        sheets.append(
            ("celebs", celebs, lambda r: f"identity {r['identity']}", lambda r: r["sample_id"])
        )
    written = []
    (out / SHEETS).mkdir(exist_ok=True)  # a declared output even where no sheet has rows
    for name, df, heading, text in sheets:
        path = contact_sheet(
            _sheet_items(df.head(48), heading, text),
            out / SHEETS / f"{name}.png",
            f"{name}: {len(df)} rows (first {min(len(df), 48)})",
        )
        if path:
            written.append(f"{SHEETS}/{path.name}")
    if card:
        _card_plot(card, out / "data_card.png")
    else:
        _published_card_plot(tables, out / "data_card.png")
    _card_md(out / "data_card.md", summary, written, True)


def _card_plot(card, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    bins = np.arange(15, 95, 5)
    for key, label, style in (
        ("author_age", "authors", dict(color="k", lw=2)),
        ("pool_age", "pool faces as drawn", dict(color="tab:blue")),
        ("aged_pool_age", "pool faces after the age shift", dict(color="tab:orange")),
        ("face_age", "matched faces (final)", dict(color="tab:green", lw=2)),
    ):
        ax[0].hist(card[key], bins=bins, density=True, histtype="step", label=label, **style)
    ax[0].set(title="age (years, faces measured from the image)", xlabel="age", ylabel="density")
    ax[0].legend(fontsize=8)
    for a, key, cats in (
        (ax[1], "gender", ["female", "male"]),
        (ax[2], "ethnicity", list(F.ETHNICITIES)),
    ):
        x = np.arange(len(cats))
        for off, who in ((-0.2, "author"), (0.2, "face")):
            vals = [card[f"{who}_{key}"].count(c) for c in cats]
            a.bar(x + off, vals, width=0.4, label=f"{who}s")
        a.set_xticks(x, cats, rotation=20 if key == "ethnicity" else 0, fontsize=8)
        a.set(title=f"{key}: authors vs their matched faces", ylabel="count")
        a.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, metadata={"Software": None})
    plt.close(fig)


def _published_card_plot(tables, path, n_photos=16, tile=96):
    """Rows per table, photos per author, and the first photo of the first n_photos authors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    names = sorted(tables)
    ax[0].barh(names, [len(tables[n]) for n in names], color="tab:blue")
    ax[0].set(title="rows per table", xscale="log", xlabel="rows")
    ax[0].tick_params(axis="y", labelsize=8)
    full = tables.get("full", pd.DataFrame(columns=["author_id", "image"]))
    per_author = full.groupby("author_id").size()
    ax[1].hist(per_author, bins=20, color="tab:green")
    ax[1].set(
        title=f"photos per author ({len(per_author)} authors)", xlabel="photos", ylabel="authors"
    )
    first = full.drop_duplicates("author_id").head(n_photos)
    side = math.ceil(math.sqrt(max(len(first), 1)))
    grid = np.full((side * tile, side * tile, 3), 255, dtype=np.uint8)
    for i, image in enumerate(first["image"]):
        im = Image.fromarray(decode(image)).resize((tile, tile), Image.Resampling.LANCZOS)
        r, c = divmod(i, side)
        grid[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = np.asarray(im)
    ax[2].imshow(grid)
    ax[2].set(title=f"one photo of each of the first {len(first)} authors")
    ax[2].axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, metadata={"Software": None})
    plt.close(fig)


def _card_md(path, summary, sheets, has_plot):
    lines = [
        "# CLEAR visual dataset: data card",
        "",
        f"Source: {summary['source']}",
        "",
        "| table | rows |",
        "|---|---|",
    ]
    lines += [f"| {name} | {n} |" for name, n in sorted(summary["tables"].items())]
    if "match" in summary:
        m, r = summary["match"], summary["realism"]
        lines += [
            "",
            "## Author-face matching (attributes measured on the final portraits)",
            "",
            f"- authors: {summary['authors']}, face pool: {summary['pool']}",
            f"- mean |author age - face age|: {m['mean_abs_age_diff']} years",
            f"- gender agreement: {m['gender_agreement']:.1%}",
            f"- ethnicity agreement: {m['ethnicity_agreement']:.1%}",
            f"- faces that took the age shift: {m['aged_share']:.1%}",
            "",
            "## Personalized photos",
            "",
            f"- backends: faces {summary['backends']['faces']}, photos "
            f"{summary['backends']['photos']}; best of {summary['n_candidates']} candidates "
            "per QA by the realism score",
            '- prompt (paper App. B): "a real photo of a[n old] {man|woman} called {name} img, '
            'showing face." + setting sentences from the QA',
            f"- mean realism score of the chosen photos: {r['mean_chosen_score']}",
        ]
        if "chosen_defective" in r:
            lines += [
                f"- candidates drawn with a generator defect: {r['candidates_defective']:.1%}; "
                f"chosen photos with one: {r['chosen_defective']:.1%}"
            ]
    if "celebs" in summary:
        c = summary["celebs"]
        lines += [
            "",
            "## Celebs (vision pretraining identities)",
            "",
            f"- synthesized with the {c['backend']} faces backend: {c['identities']} identities x "
            f"{c['images_per_identity']} images, {c['image_size']} px; a stand-in for the "
            "paper's Celebs set, which was not published",
        ]
    m = summary.get("mia_holdout")
    if isinstance(m, dict):
        lines += [
            "",
            "## Attack probes",
            "",
            f"- mia_holdout: {m['photos']} photos of {m['authors']} authors no model trains on "
            "(the text dataset's mia holdout), their faces matched from pool identities no "
            "CLEAR author has",
            "- forgetXX_probe: one new photo per forget QA of the same face, drawn from a seed "
            "stream of its own (pose, lighting, scene layout): never a training image",
        ]
    elif m:
        lines += ["", "## Attack probes", "", f"- mia_holdout: {m}; no forgetXX_probe tables"]
    v = summary["vision_split"]
    lines += [
        "",
        "## Vision split",
        "",
        f"F = the authors of {v['forget_split']} ({v['forget']}), H = a seeded choice of "
        f"{v['holdout']} other authors (holdout.parquet holds their photos), "
        f"other: {v['other']}.",
        "",
        "## Files",
        "",
    ]
    lines += [f"- {s}" for s in sheets] + (["- data_card.png"] if has_plot else [])
    write_text_atomic(path, "\n".join(lines) + "\n")
