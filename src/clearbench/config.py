"""Validate the merged parameters before any job runs: one line naming the key, no traceback."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from clearbench import compute

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"
TOFU_FILES = [
    "full.json",
    "retain_perturbed.json",
    "real_authors_perturbed.json",
    "world_facts_perturbed.json",
]


class ConfigError(ValueError):
    pass


def compute_section(config: dict) -> dict:
    """What a text or vlm job reads of `compute` (threads and cluster resources are the
    scheduler's business: a change to them reruns nothing)."""
    return {k: config["compute"][k] for k in compute.KEYS}


def vlm_stage_hp(stage: str, vlm: dict) -> dict:
    """The flat --hp of one vlm stage (base, finetune, eval) from a `vlm:` params section with
    `seed` in it: the stage's own keys plus what every stage reads (base also gets the model)."""
    values = {"seed": vlm["seed"], "max_len": vlm["max_len"], **vlm[stage]}
    if stage == "base":
        values |= {"model": vlm["model"], "vocab_size": vlm["vocab_size"]}
    return values


def unlearn_stage_hp(config: dict, track: str, method: str | None, l1: bool) -> dict:
    """The flat --hp of an unlearning job of a language track (`method=None`: DPO's IDK
    reference): the track's training keys, and only this method's hyperparameters (shared
    `unlearn.method_hp` overlaid by the track's own), so tuning one method reruns only its jobs."""
    section = config[track]["unlearn"]
    train = {k: v for k, v in section.items() if k not in ("reference", "method_hp")}
    values = {"seed": config["seed"], "max_len": config[track]["max_len"], **train}
    if method is None:
        values |= section["reference"]
    else:
        own = config["unlearn"]["method_hp"].get(method, {})
        values |= {
            "method": method,
            "method_hp": own | section.get("method_hp", {}).get(method, {}),
        }
    values["l1_lambda"] = section["l1_lambda"] if l1 else 0.0
    if track == "vlm":
        values["freeze_vision_tower"] = config["vlm"]["finetune"]["freeze_vision_tower"]
    return values


def key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def schema_errors(config: dict, schema_path: Path = SCHEMA) -> list[str]:
    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(e.absolute_path), e.message))
    messages = []
    for err in errors:
        # oneOf/allOf report the whole sub-object; their first nested cause names the real key
        leaf = min(err.context, key=lambda e: len(e.absolute_path) * -1) if err.context else err
        messages.append(f"{key_path(leaf)}: {leaf.message}")
    return messages


def check(
    config: dict,
    known_methods: dict[str, dict[str, type]] | None = None,
    root: Path | None = None,
    known_vision_methods: list[str] | None = None,
) -> None:
    """Raise ConfigError with one line for the first problem found.

    `known_methods` maps each language-track method to its declared hyperparameters (name ->
    type). `root` is the workflow folder: its schema and relative paths are the ones that apply.
    """
    errors = schema_errors(config, root / SCHEMA.relative_to(SCHEMA.parents[2]) if root else SCHEMA)
    if errors:
        raise ConfigError(f"params error at {errors[0]}")
    settings = config["compute"]
    if settings["quantize"] != "none" and settings["device"] == "cpu":
        raise ConfigError(
            f"params error at compute.quantize: {settings['quantize']} loading needs a GPU"
            " (bitsandbytes); set compute.device to cuda or auto, or quantize: none"
        )
    fractions = config["data"]["forget_fractions"]
    for split in config["data"]["splits"]:
        if split not in fractions:
            raise ConfigError(
                f"params error at data.splits: '{split}' is not a key of data.forget_fractions"
            )
    if known_methods is not None:
        check_methods(config, known_methods)
    for track in ("vision", "vlm"):
        if track in config["tracks"]:
            if config.get(track) is None:
                raise ConfigError(
                    f"params error at {track}: the {track} track is on but has no section"
                )
            if not config["data"]["clear"]["build"]:
                raise ConfigError(
                    f"params error at tracks: the {track} track needs the CLEAR photos"
                    " (data.clear.build: true)"
                )
    if "vision" in config["tracks"]:
        check_vision(config, known_vision_methods)
    text = config["data"]["text"]
    if text["source"] == "tofu" and not str(text.get("tofu_dir", "")).startswith("hub:"):
        folder = Path(text.get("tofu_dir") or "")
        if root is not None and not folder.is_absolute():
            folder = root / folder
        if not text.get("tofu_dir") or not folder.is_dir():
            raise ConfigError(
                f"params error at data.text.tofu_dir: TOFU folder not found: {folder}"
            )
        for name in TOFU_FILES + [f"{s}_perturbed.json" for s in config["data"]["splits"]]:
            if not (folder / name).is_file():
                raise ConfigError(
                    f"params error at data.text.tofu_dir: missing TOFU file {folder / name}"
                )


def check_methods(config: dict, known: dict[str, dict[str, type]]) -> None:
    """Every method run is known, and its hyperparameters (shared, then each language track's
    overrides) are exactly the ones it declares, with the declared types."""
    unlearn = config["unlearn"]
    names = ", ".join(sorted(known))
    listed = {
        "methods": unlearn["methods"],
        "modality_study.methods": unlearn["modality_study"]["methods"],
    }
    for key, methods in listed.items():
        for method in methods:
            if method not in known:
                raise ConfigError(
                    f"params error at unlearn.{key}: unknown method '{method}' (known: {names})"
                )
    tracks = [t for t in ("text", "vlm") if t in config["tracks"]]
    for where, table in [("unlearn.method_hp", unlearn["method_hp"])] + [
        (f"{t}.unlearn.method_hp", config[t]["unlearn"].get("method_hp", {})) for t in tracks
    ]:
        for method in table:
            if method not in known:
                raise ConfigError(
                    f"params error at {where}: unknown method '{method}' (known: {names})"
                )
    for method in unlearn["methods"]:
        declared = known[method]
        for track in tracks:
            shared = unlearn["method_hp"].get(method, {})
            own = config[track]["unlearn"].get("method_hp", {}).get(method, {})
            for name in declared.keys() - (shared.keys() | own.keys()):
                kind = declared[name].__name__
                raise ConfigError(
                    f"params error at unlearn.method_hp.{method}: missing '{name}' ({kind})"
                )
            for name, value in (shared | own).items():
                section = f"{track}.unlearn" if name in own else "unlearn"
                where = f"{section}.method_hp.{method}.{name}"
                if name not in declared:
                    allowed = ", ".join(sorted(declared)) or "none"
                    raise ConfigError(
                        f"params error at {where}: unknown hyperparameter (known: {allowed})"
                    )
                kind = declared[name]
                if isinstance(value, bool) or not isinstance(
                    value, (int, float) if kind is float else kind
                ):
                    raise ConfigError(
                        f"params error at {where}: {value!r} is not of type '{kind.__name__}'"
                    )


def check_vision(config: dict, known: list[str] | None) -> None:
    vision = config["vision"]
    for key, names in (
        ("methods", vision["methods"]),
        ("unlearn.method_hp", vision["unlearn"]["method_hp"]),
    ):
        for name in names if known is not None else ():
            if name not in known:
                raise ConfigError(
                    f"params error at vision.{key}: unknown vision method '{name}'"
                    f" (known: {', '.join(sorted(known))})"
                )
