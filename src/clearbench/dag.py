"""Where the DAG puts things: the models each track evaluates and their paths, from params
alone. No torch: the Snakefile and the dvc.yaml generator (clearbench.dvc_stages) both read
this, so the two engines agree on every path."""

from __future__ import annotations

LANGUAGE_TRACKS = ("text", "vlm")


def retain_of(split: str) -> str:
    """forget10 -> retain90: the complement, named as TOFU does."""
    return f"retain{100 - int(split[len('forget') :]):02d}"


def language_tracks(config: dict) -> list[str]:
    return [t for t in LANGUAGE_TRACKS if t in config["tracks"]]


def unlearned_models(config: dict, track: str = "text", method: str | None = None) -> list[str]:
    """`method-l1-modality` of every unlearning run of a language track: each method without and
    with l1 (unlearn.l1, or the track's own <track>.unlearn.l1; text: text modality; vlm: each of
    unlearn.modalities), and the modality study's
    methods also in its modalities, without l1 (the paper's Table 3). `method`: its runs only."""
    from clearbench.unlearn.registry import DECLARED

    unlearn = config["unlearn"]
    methods = [m for m in unlearn["methods"] if method in (None, m)]
    methods = [m for m in methods if m not in DECLARED or track in DECLARED[m].tracks]
    edits = [m for m in methods if m in DECLARED and DECLARED[m].edit]
    trained = [m for m in methods if m not in edits]
    l1_tags = ["l1" if on else "nol1" for on in config[track]["unlearn"].get("l1", unlearn["l1"])]
    if track == "text":
        runs = [(m, l1, "text") for m in trained for l1 in l1_tags]
    else:
        runs = [(m, l1, mod) for m in trained for l1 in l1_tags for mod in unlearn["modalities"]]
        study = unlearn["modality_study"]
        runs += [(m, "nol1", mod) for m in study["methods"] if m in trained
                 for mod in study["modalities"]]  # fmt: skip
    # an edit has no l1 penalty, and its own forget modality (Unlink: the photos)
    runs += [(m, "nol1", DECLARED[m].modality or mod) for m in edits
             for mod in (["text"] if track == "text" else unlearn["modalities"])]  # fmt: skip
    return list(dict.fromkeys("-".join(run) for run in runs))


def evaluated_models(config: dict, track: str = "text") -> list[str]:
    return ["original", "gold"] + unlearned_models(config, track)


def model_dir(track: str, split: str, model: str) -> str:
    if model == "original":
        return f"results/models/{track}/original"
    if model == "gold":
        return f"results/models/{track}/gold/{split}"
    method, l1, modality = model.split("-")
    return f"results/models/{track}/unlearn/{method}/{split}/{l1}-{modality}"


def eval_table(track: str, split: str, model: str) -> str:
    """The per-sample table of one model (DESIGN section 6)."""
    return f"results/eval/{track}/{split}/{model}.parquet"


def metrics_file(track: str, split: str, model: str) -> str:
    return f"results/metrics/{track}/{split}/{model}.json"


def authors_metrics_file(track: str, split: str, model: str) -> str:
    """The same scores in the CLEAR authors' convention (metrics --authors-out)."""
    return f"results/metrics_authors/{track}/{split}/{model}.json"


def all_metrics(config: dict) -> list[str]:
    """Metrics files of the models evaluated per-sample (text, vlm), one leaderboard row each."""
    return [
        metrics_file(track, split, model)
        for track in language_tracks(config)
        for split in config["data"]["splits"]
        for model in evaluated_models(config, track)
    ]


def vision_chunks(config: dict) -> list[str]:
    """`a-b`: the protocol models a..b-1, trained together as one job."""
    vision = config.get("vision") or {}
    n, chunk = vision.get("n_models", 0), vision.get("chunk", 1)
    return [f"{a}-{min(a + chunk, n)}" for a in range(0, n, chunk)]


def attacked_models(config: dict, track: str = "text") -> list[str]:
    """The models of a language track the attacks run on (clearbench.attacks): the original,
    the gold and every unlearned model of the methods in attacks.methods, without and/or with
    l1 as attacks.l1 says (all runs when it is absent)."""
    attacks = config.get("attacks") or {}
    if attacks.get("methods") is None:
        return []
    l1 = ["l1" if on else "nol1" for on in attacks.get("l1", [False, True])]
    runs = [m for m in unlearned_models(config, track)
            if m.split("-")[0] in attacks["methods"] and m.split("-")[1] in l1]  # fmt: skip
    return ["original", "gold", *runs]


def attack_table(track: str, split: str, model: str) -> str:
    """The per-sample table of the attacks on one model (section 6's columns plus `attack`)."""
    return f"results/attacks/{track}/{split}/{model}.parquet"


def attack_metrics(track: str, split: str, model: str) -> str:
    return f"results/attacks/{track}/{split}/{model}.json"


def all_attack_metrics(config: dict) -> list[str]:
    return [
        attack_metrics(track, split, model)
        for track in language_tracks(config)
        for split in config["data"]["splits"]
        for model in attacked_models(config, track)
    ]


def relearned_families(config: dict) -> list[str]:
    """Vision families the relearning attack runs on: original, gold, vision.attacks.methods."""
    vision = config.get("vision") or {}
    if "vision" not in config["tracks"] or not vision.get("attacks"):
        return []
    return ["original", "gold", *vision["attacks"]["methods"]]
