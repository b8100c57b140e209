"""Validate the merged parameters before any job runs: one line naming the key, no traceback."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import jsonschema
import yaml

from clearbench import compute
from clearbench.hparams import Param, param
from clearbench.io import write_text_atomic
from clearbench.unlearn.registry import DECLARED, TRAINING

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"
TOFU_FILES = [
    "full.json",
    "retain_perturbed.json",
    "real_authors_perturbed.json",
    "world_facts_perturbed.json",
]
TOFU_AUTHORS = 200


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


def is_edit(method: str | None) -> bool:
    """A training-free language method (Unlink): no optimizer, no l1."""
    return method in DECLARED and DECLARED[method].edit


def unlearn_stage_hp(config: dict, track: str, method: str | None, l1: bool) -> dict:
    """The flat --hp of an unlearning job of a language track (`method=None`: DPO's IDK
    reference): the track's training keys, and only this method's hyperparameters (shared
    `unlearn.method_hp` overlaid by the track's own), so tuning one method reruns only its jobs."""
    section = config[track]["unlearn"]
    train = {k: v for k, v in section.items() if k not in ("reference", "method_hp", "l1")}
    if is_edit(method):
        train = {}  # no optimizer: a change of the track's training keys leaves it alone
    values = {"seed": config["seed"], "max_len": config[track]["max_len"], **train}
    if method is None:
        values |= section["reference"]
    else:
        own = config["unlearn"]["method_hp"].get(method, {})
        own = own | section.get("method_hp", {}).get(method, {})
        values |= {k: v for k, v in own.items() if k in TRAINING}  # this method's own lr, ...
        values |= {
            "method": method,
            "method_hp": {k: v for k, v in own.items() if k not in TRAINING},
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
    # an unevaluatedProperties error lists every key of a section whose other checks failed:
    # those failures name the key, so they come first
    errors = sorted(
        validator.iter_errors(config),
        key=lambda e: (e.validator == "unevaluatedProperties", list(e.absolute_path), e.message),
    )
    messages = []
    for err in errors:
        # oneOf/allOf report the whole sub-object; their first nested cause names the real key
        leaf = min(err.context, key=lambda e: len(e.absolute_path) * -1) if err.context else err
        if leaf.validator in ("additionalProperties", "unevaluatedProperties"):
            messages.append(unknown_key(leaf, schema.get("$defs", {})))
        else:
            messages.append(f"{key_path(leaf)}: {leaf.message}")
    return messages


def unknown_key(error: jsonschema.ValidationError, defs: dict) -> str:
    """`section.key: unknown key (known: ...)` for the first key a section does not allow."""
    allowed = set()
    for part in [error.schema, *error.schema.get("allOf", [])]:
        if "$ref" in part:
            part = defs.get(part["$ref"].rsplit("/", 1)[-1], {})
        allowed |= set(part.get("properties", {}))
    extra = sorted(k for k in error.instance if k not in allowed)
    if not extra:  # patternProperties and the like: jsonschema's own words
        return f"{key_path(error)}: {error.message}"
    where = ".".join(str(p) for p in [*error.absolute_path, extra[0]])
    return f"{where}: unknown key (known: {', '.join(sorted(allowed))})"


def check_attacks(config: dict) -> None:
    """An attacked method must be one that runs: an attack on a model the DAG never builds
    would otherwise be a missing input deep in the DAG."""
    sections = {"attacks": config["unlearn"]["methods"]}
    if "vision" in config["tracks"] and config.get("vision"):
        sections["vision.attacks"] = config["vision"]["methods"]
    for key, methods in sections.items():
        section = config.get("attacks") if key == "attacks" else config["vision"].get("attacks")
        for method in (section or {}).get("methods", []):
            if method not in methods:
                where = "unlearn.methods" if key == "attacks" else "vision.methods"
                raise ConfigError(
                    f"params error at {key}.methods: '{method}' is not in {where} (only methods"
                    " that run can be attacked)"
                )


def check(
    config: dict,
    known_methods: dict[str, dict[str, Param | type]] | None = None,
    root: Path | None = None,
    known_vision_methods: dict[str, dict[str, Param | type]] | list[str] | None = None,
    checked_models: Path | None = None,
) -> None:
    """Raise ConfigError with one line for the first problem found.

    `known_methods` maps each language-track method to its declared hyperparameters (name ->
    Param, or a bare type); `known_vision_methods` the same for the vision track (a list: the
    names only). `root` is the workflow folder: its schema and relative paths are the ones
    that apply. `checked_models`: a file remembering model sections that already built, so
    that a workflow parse imports transformers (and with it torch) only when one changed.
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
    check_forget_sizes(config)
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
    if "clip" in config["tracks"]:
        check_clip(config)
    check_attacks(config)
    check_models(config, root, checked_models)
    check_published(config, root)
    text = config["data"]["text"]
    if text["source"] == "tofu" and not str(text.get("tofu_dir", "")).startswith("hub:"):
        folder = Path(text.get("tofu_dir") or "")
        if root is not None and not folder.is_absolute():
            folder = root / folder
        if not text.get("tofu_dir"):
            raise ConfigError(
                "params error at data.text.tofu_dir: missing (source tofu needs"
                " hub:locuslab/TOFU or a local folder)"
            )
        if not folder.is_dir():
            raise ConfigError(
                f"params error at data.text.tofu_dir: TOFU folder not found: {folder}"
            )
        for name in TOFU_FILES + [f"{s}_perturbed.json" for s in config["data"]["splits"]]:
            if not (folder / name).is_file():
                raise ConfigError(
                    f"params error at data.text.tofu_dir: missing TOFU file {folder / name}"
                )


def check_methods(config: dict, known: dict[str, dict[str, Param | type]]) -> None:
    """Every method run is known, and its hyperparameters (shared, then each language track's
    overrides) are exactly the ones it declares, with the declared types and ranges."""
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
    edits = {name for name, d in DECLARED.items() if d.edit}
    for method in unlearn["methods"]:
        declared = known[method]
        for track in tracks:
            shared = unlearn["method_hp"].get(method, {})
            own = config[track]["unlearn"].get("method_hp", {}).get(method, {})
            required = {n for n, d in declared.items() if not param(d).optional}
            for name in sorted(required - (shared.keys() | own.keys())):
                kind = param(declared[name]).kind.__name__
                raise ConfigError(
                    f"params error at unlearn.method_hp.{method}: missing '{name}' ({kind})"
                )
            for name, value in (shared | own).items():
                section = f"{track}.unlearn" if name in own else "unlearn"
                where = f"{section}.method_hp.{method}.{name}"
                training = {} if method in edits else TRAINING  # an edit has no optimizer
                check_hp_value(where, {**training, **declared}, name, value)


def check_vision(config: dict, known: dict[str, dict] | list[str] | None) -> None:
    """Known methods with their declared hyperparameters (each optional: the method's default
    applies), and a model count the membership protocol can split."""
    vision = config["vision"]
    n_models, chunk = vision["n_models"], vision["chunk"]
    if n_models % chunk:
        raise ConfigError(
            f"params error at vision.chunk: {chunk} does not divide vision.n_models ({n_models})"
        )
    hp_table = vision["unlearn"]["method_hp"]
    for key, names in (("methods", vision["methods"]), ("unlearn.method_hp", hp_table)):
        for name in names if known is not None else ():
            if name not in known:
                raise ConfigError(
                    f"params error at vision.{key}: unknown vision method '{name}'"
                    f" (known: {', '.join(sorted(known))})"
                )
    if not isinstance(known, dict):
        return
    for method, values in hp_table.items():
        for name, value in values.items():
            check_hp_value(f"vision.unlearn.method_hp.{method}.{name}", known[method], name, value)


def check_clip(config: dict) -> None:
    """The clip track: a section, the CLEAR photos, known methods with declared
    hyperparameters (clearbench.clip.registry)."""
    from clearbench.clip.registry import declared

    if config.get("clip") is None:
        raise ConfigError("params error at clip: the clip track is on but has no section")
    if not config["data"]["clear"]["build"]:
        raise ConfigError(
            "params error at tracks: the clip track needs the CLEAR photos (data.clear.build: true)"
        )
    known = declared()
    clip = config["clip"]
    for key, names in (("methods", clip["methods"]), ("method_hp", clip["method_hp"])):
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"params error at clip.{key}: unknown clip method '{name}'"
                    f" (known: {', '.join(sorted(known))})"
                )
    for method, values in clip["method_hp"].items():
        for name, value in values.items():
            check_hp_value(f"clip.method_hp.{method}.{name}", known[method], name, value)


def check_hp_value(where: str, declared: dict, name: str, value) -> None:
    """One method hyperparameter against its method's declaration (name, type, range)."""
    if name not in declared:
        allowed = ", ".join(sorted(declared)) or "none"
        raise ConfigError(f"params error at {where}: unknown hyperparameter (known: {allowed})")
    problem = param(declared[name]).problem(value)
    if problem:
        raise ConfigError(f"params error at {where}: {problem}")


def check_forget_sizes(config: dict) -> None:
    """Every forget split takes at least one author and leaves at least one (as
    clearbench.data.text.forget_authors: the last max(1, round(fraction * n)) authors)."""
    text = config["data"]["text"]
    n = text["n_authors"] if text["source"] == "synthetic" else TOFU_AUTHORS
    for name, fraction in config["data"]["forget_fractions"].items():
        k = max(1, round(fraction * n))
        if k >= n:
            raise ConfigError(
                f"params error at data.forget_fractions.{name}: {fraction} of {n} authors"
                f" forgets {k}, leaving no retain author"
            )


def is_local_path(value: str) -> bool:
    """A checkpoint or source that names a local path, not a Hub id (`name`, `owner/name`)."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1


def check_path(where: str, value: str, root: Path | None, what: str, local: bool = False) -> None:
    """A local path (`local`: any value that is not a Hub id `owner/name`) exists."""
    folder = Path(value).expanduser()
    if root is not None and not folder.is_absolute():
        folder = root / folder
    if (local or is_local_path(value)) and not folder.exists():
        raise ConfigError(f"params error at {where}: {what} not found: {folder}")


def check_published(config: dict, root: Path | None) -> None:
    """A published CLEAR source given as a local folder exists."""
    clear = config["data"]["clear"]
    if not clear["build"] or clear["backends"]["source"] != "published":
        return
    source = (clear.get("published") or {}).get("source")
    if not isinstance(source, str) or not source:
        raise ConfigError(
            "params error at data.clear.published.source: the published backend needs a"
            " source (a Hub id such as therem/CLEAR, or a local folder)"
        )
    local = source.count("/") != 1  # as clearbench.data.backends reads it
    check_path("data.clear.published.source", source, root, "published CLEAR copy", local)


# model config keys that count something: each must be at least 1 (lists: every element)
SIZE_KEY = re.compile(r"(^num_|_size$|_sizes$|^depths$|_dim$|^max_position_embeddings$)")
# keys the pipeline sets itself (from the tokenizer and the vision tower)
PIPELINE_KEYS = {
    "LlamaConfig": {"vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"},
    "LlavaConfig": {"image_token_index", "image_seq_length"},
    "CLIPTextConfig": {"vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"},
}


def check_models(config: dict, root: Path | None, checked: Path | None = None) -> None:
    """Each model section builds the transformers config it describes (no weights): ResNet for
    vision, Llama for text, LLaVA (CLIP vision tower + Llama) for vlm; a local checkpoint
    exists. Sections listed in the `checked` file built before and are not built again."""
    seen = set(json.loads(checked.read_text())) if checked and checked.is_file() else set()
    passed = []
    for track in ("text", "vlm", "vision", "clip"):
        if track == "clip" and track not in config["tracks"]:
            continue
        model = (config.get(track) or {}).get("model") or {}
        checkpoint = model.get("checkpoint")
        if checkpoint and track in config["tracks"]:
            check_path(f"{track}.model.checkpoint", checkpoint, root, "checkpoint folder")
        if "config" not in model or checkpoint:
            continue  # a checkpoint loads as its own config says (models.factory)
        # the transformers version is part of the key: a new release may reject a key
        key = json.dumps([track, model["config"], (config.get(track) or {}).get("vocab_size"),
                          metadata.version("transformers")], sort_keys=True)  # fmt: skip
        passed.append(key)
        if key in seen:
            continue
        cfg, where = model["config"], f"{track}.model.config"
        if track == "vision":
            build_config("ResNetConfig", cfg, where)
        elif track == "text":
            build_config("LlamaConfig", cfg, where, config["text"]["vocab_size"])
        elif track == "clip":  # the vocabulary comes from the tokenizer trained on the prompts
            parts = {
                "vision_config": build_config(
                    "CLIPVisionConfig", cfg.get("vision_config", {}), f"{where}.vision_config"
                ).to_dict(),
                "text_config": build_config(
                    "CLIPTextConfig", cfg.get("text_config", {}), f"{where}.text_config"
                ).to_dict(),
            }
            rest = {k: v for k, v in cfg.items() if k not in parts}
            build_config("CLIPConfig", rest, where, extra=parts)
        else:
            vocab = config["vlm"]["vocab_size"]
            parts = {
                "vision_config": build_config(
                    "CLIPVisionConfig", cfg["vision_config"], f"{where}.vision_config"
                ),
                "text_config": build_config(
                    "LlamaConfig", cfg["text_config"], f"{where}.text_config", vocab
                ),
            }
            rest = {k: v for k, v in cfg.items() if k not in parts}
            build_config("LlavaConfig", rest, where, extra=parts)
    if checked and not seen.issuperset(passed):
        checked.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(checked, json.dumps(sorted(seen | set(passed))))


def config_class(name: str):
    """A transformers config class, imported from its configuration module only."""
    if name == "ResNetConfig":
        from transformers.models.resnet.configuration_resnet import ResNetConfig as cls
    elif name == "LlamaConfig":
        from transformers.models.llama.configuration_llama import LlamaConfig as cls
    elif name == "CLIPVisionConfig":
        from transformers.models.clip.configuration_clip import CLIPVisionConfig as cls
    elif name == "CLIPTextConfig":
        from transformers.models.clip.configuration_clip import CLIPTextConfig as cls
    elif name == "CLIPConfig":
        from transformers.models.clip.configuration_clip import CLIPConfig as cls
    else:
        from transformers.models.llava.configuration_llava import LlavaConfig as cls
    return cls


def build_config(
    name: str, cfg: dict, where: str, vocab_size: int | None = None, extra: dict | None = None
):
    """Build `name` from the params `cfg` as clearbench.models.factory / vision.model do, and
    turn what the config class rejects into one line naming the key."""
    import dataclasses

    from huggingface_hub.errors import (
        StrictDataclassClassValidationError,
        StrictDataclassFieldValidationError,
    )

    cls = config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in cfg.items():
        if key not in fields or key in PIPELINE_KEYS.get(name, ()):
            why = "set by the pipeline" if key in fields else f"{name} has no such key"
            raise ConfigError(f"params error at {where}.{key}: unknown key ({why})")
        items = value if isinstance(value, list) else [value]
        if SIZE_KEY.search(key) and any(
            isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in items
        ):
            raise ConfigError(f"params error at {where}.{key}: {value!r} must be at least 1")
    kwargs = dict(cfg)
    if name == "LlamaConfig":
        kwargs.setdefault("num_key_value_heads", kwargs.get("num_attention_heads"))
        kwargs |= {"vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 1}
        kwargs |= {"eos_token_id": 2}
    kwargs |= extra or {}
    try:
        built = cls(**kwargs)
    except StrictDataclassClassValidationError as err:  # "layer_type=fancy is not one of ..."
        key = re.match(r"(\w+)=", cause(err))
        at = f"{where}.{key.group(1)}" if key and key.group(1) in cfg else where
        raise ConfigError(f"params error at {at}: {cause(err)}") from None
    except (StrictDataclassFieldValidationError, TypeError, ValueError) as err:
        field = re.search(r"field '(\w+)'", str(err), re.IGNORECASE)
        at = f"{where}.{field.group(1)}" if field and field.group(1) in cfg else where
        raise ConfigError(f"params error at {at}: {cause(err)}") from None
    if name == "ResNetConfig" and len(built.depths) != len(built.hidden_sizes):
        raise ConfigError(
            f"params error at {where}.depths: {len(built.depths)} stages, but hidden_sizes"
            f" has {len(built.hidden_sizes)}"
        )
    if name == "CLIPVisionConfig" and built.patch_size > built.image_size:
        raise ConfigError(
            f"params error at {where}.patch_size: {built.patch_size} is larger than"
            f" image_size ({built.image_size})"
        )
    return built


def cause(err: Exception) -> str:
    """The last line of a (strict dataclass) validation error, without its exception name and
    field name: "expected int, got str (value: 'abc')"."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    last = re.sub(r"^\w+(Error|Exception): ", "", last)
    last = re.sub(r"^Field '\w+' (with value )?", "", last).split(". Errors:")[0]
    return re.sub(r"<class '(\w+)'>", r"\1", last)
