"""Validate the merged parameters before any job runs: one line naming the key, no traceback."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"
TOFU_FILES = [
    "full.json",
    "retain_perturbed.json",
    "real_authors_perturbed.json",
    "world_facts_perturbed.json",
]


class ConfigError(ValueError):
    pass


def vlm_stage_hp(stage: str, vlm: dict) -> dict:
    """The flat --hp of one vlm stage (base, finetune, eval) from a `vlm:` params section with
    `seed` in it: the stage's own keys plus what every stage reads (base also gets the model)."""
    values = {"seed": vlm["seed"], "max_len": vlm["max_len"], **vlm[stage]}
    if stage == "base":
        values |= {"model": vlm["model"], "vocab_size": vlm["vocab_size"]}
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
    known_methods: list[str] | None = None,
    root: Path | None = None,
    known_vision_methods: list[str] | None = None,
) -> None:
    """Raise ConfigError with one line for the first problem found.

    `root` is the workflow folder: its schema and relative paths are the ones that apply.
    """
    errors = schema_errors(config, root / SCHEMA.relative_to(SCHEMA.parents[2]) if root else SCHEMA)
    if errors:
        raise ConfigError(f"params error at {errors[0]}")
    fractions = config["data"]["forget_fractions"]
    for split in config["data"]["splits"]:
        if split not in fractions:
            raise ConfigError(
                f"params error at data.splits: '{split}' is not a key of data.forget_fractions"
            )
    if known_methods is not None:
        for method in config["unlearn"]["methods"]:
            if method not in known_methods:
                raise ConfigError(
                    f"params error at unlearn.methods: unknown method '{method}'"
                    f" (known: {', '.join(sorted(known_methods))})"
                )
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
