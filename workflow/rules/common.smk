import json
import os
import sys
from pathlib import Path

from clearbench import dag
from clearbench.compute import ComputeError, check_device
from clearbench.dag import model_dir, retain_of
from clearbench.config import ConfigError, check, compute_section, unlearn_stage_hp, vlm_stage_hp
# the registries of names and hyperparameters, not the methods: parsing imports no torch
from clearbench.unlearn.registry import DECLARED as METHODS
from clearbench.vision.registry import HP as VISION_METHODS
from clearbench.vision.registry import declared as vision_methods_declared
from clearbench.vision.registry import EDITS as VISION_EDITS
from clearbench.clip.registry import HP as CLIP_METHODS

try:
    check(
        config,
        known_methods={name: method.hp for name, method in METHODS.items()},
        root=Path(workflow.basedir),
        known_vision_methods=vision_methods_declared(),
        checked_models=Path(".snakemake/clearbench/checked-models.json"),
    )
except ConfigError as err:
    # one line, before any job runs (a raised exception would print a traceback)
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)



onstart:
    # before the first job: a local run that asks for a GPU this machine lacks stops here (a
    # dry-run and a cluster submission need none here; the executor is known only now)
    if workflow.local_exec and not workflow.touch:
        try:
            check_device(config["compute"])
        except ComputeError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)


# code lives with the workflow, data in the working directory (usually the same folder)
SRC = os.path.normpath(os.path.join(os.path.relpath(workflow.basedir), "src", "clearbench"))
SPLITS = config["data"]["splits"]
FRACTIONS = config["data"]["forget_fractions"]
UNLEARN = config["unlearn"]
METHOD_NAMES = UNLEARN["methods"]
LANGUAGE_TRACKS = dag.language_tracks(config)
THREADS = config["compute"]["threads"]
COMPUTE = compute_section(config)  # device and precision of every text and vlm job
VLM = config.get("vlm", {})
VLM_ON = "vlm" in config["tracks"]
# what a text evaluation reads (mink_k is the metrics job's: a change reruns no model)
TEXT_EVAL = {k: v for k, v in config["eval"].items() if k != "mink_k"}
BOOT = config.get("bootstrap", {"n": 0, "seed": 0, "level": 0.95})
BOOTSTRAP = f"--bootstrap {BOOT['n']} --bootstrap-seed {BOOT['seed']} --level {BOOT['level']}"
# base pretraining runs alone in the DAG: it claims 8 threads, which Snakemake scales down to
# the --cores given (reading workflow.cores here would break runs without --cores)
SOLO_THREADS = max(THREADS, 8)


def hp(**values):
    """Hyperparameters for the CLI, as one JSON string (a plain param: a change reruns the job)."""
    return json.dumps(values, sort_keys=True)


def src(*modules):
    """Package modules a job imports, listed as inputs: imported code is not tracked otherwise."""
    return [f"{SRC}/{m}.py" for m in ("cli", *modules)]


def unlearned_models(track="text"):
    return dag.unlearned_models(config, track)


def evaluated_models(track="text"):
    return dag.evaluated_models(config, track)


def all_metrics():
    return dag.all_metrics(config)


def loaded_with(track, model):
    """The model folders that loading `model` also reads (its model.json names them): the base,
    and the original's adapter under a model tuned from it (unlearned, DPO's reference)."""
    return [f"results/models/{track}/base"] + (
        [] if model in ("original", "gold") else [f"results/models/{track}/original"]
    )


def resources(phase):
    """A job's cluster request from `compute.resources.<phase>`: GPUs, host memory (MB) and
    walltime (minutes). Phases: base, finetune, unlearn, eval, vision_pretrain, vision_train,
    vision_unlearn, and cpu for every rule that runs no model. Snakemake's -n prints them per job;
    the Slurm profile turns `gpu` into the plugin's GPU request (DESIGN section 9)."""
    request = config["compute"]["resources"][phase]
    return dict(gpu=request["gpu"], mem_mb=request["mem_mb"], runtime=request["runtime"])


def unlearn_hp(track, method, l1):
    """The --hp of an unlearning job (method None: DPO's IDK reference)."""
    return hp(**unlearn_stage_hp(config, track, method, l1 == "l1"), compute=COMPUTE)


def dpo_reference(track, wildcards):
    """The IDK-tuned reference model, for the methods that need one (DPO)."""
    if not METHODS[wildcards.method].reference:
        return []
    return f"results/models/{track}/reference/{wildcards.split}"


def text_data_hp():
    text = config["data"]["text"]
    return hp(
        seed=config["seed"],
        forget_fractions=FRACTIONS,
        source={"kind": text["source"], "path": text.get("tofu_dir")},
        n_authors=text["n_authors"],
        qa_per_author=text["qa_per_author"],
        n_general=text["n_general"],
        n_background=text["n_background"],
        n_mia_holdout=text["n_mia_holdout"],
        n_question_paraphrases=text["n_question_paraphrases"],
    )


def clear_data_hp():
    clear = {k: v for k, v in config["data"]["clear"].items() if k != "build"}
    return hp(seed=config["seed"], progress=True, **clear)


def train_hp(section, **extra):
    """A training section of params plus what every trainer needs."""
    return hp(
        seed=config["seed"], max_len=config["text"]["max_len"], compute=COMPUTE, **section, **extra
    )


def text_tasks(split):
    """Evaluation tasks of the text track -> their QA tables (DESIGN section 6)."""
    return {
        "forget": f"{TEXT_DATA}/{split}.parquet",
        "retain": f"{TEXT_DATA}/retain_eval.parquet",
        "real_authors": f"{TEXT_DATA}/real_authors.parquet",
        "world_facts": f"{TEXT_DATA}/world_facts.parquet",
        # authors no model trains on: the non-members of the membership attack
        "holdout": f"{TEXT_DATA}/mia_holdout.parquet",
    }


def vlm_hp(stage):
    """The --hp of one vlm stage: the stage's section plus what every stage reads."""
    return hp(**vlm_stage_hp(stage, {"seed": config["seed"], **VLM}), compute=COMPUTE)


def vision_hp(*sections, method=None):
    """The vision keys a step reads (a change elsewhere in `vision` does not rerun it)."""
    keys = ["image_size", "n_enroll", "n_models", "chunk", "device", "model", "loss", *sections]
    values = {k: VISION[k] for k in keys}
    if method is not None:
        # only this method's own settings, so tuning one method reruns only its jobs
        own = VISION["unlearn"]["method_hp"].get(method, {})
        # an edit (Unlink) reads no optimizer key: a change of those leaves it alone
        training = {} if method in VISION_EDITS else VISION["unlearn"]
        values["unlearn"] = {**training, "method_hp": {method: own}}
    return hp(seed=config["seed"], **values)


def vision_chunks(family, suffix):
    folder = f"unlearn/{family}" if family in VISION_METHOD_NAMES else family
    return [f"results/models/vision/{folder}/models{c}{suffix}" for c in VISION_CHUNKS]


def clip_hp(method=None):
    """The clip keys a job reads; an unlearning job gets only its own method's section."""
    values = {k: v for k, v in CLIP.items() if k not in ("methods", "method_hp")}
    own = {method: CLIP["method_hp"].get(method, {})} if method else {}
    return hp(seed=config["seed"], method_hp=own, **values)


def clip_summaries(split):
    """The summary of every clip model of a split (clearbench.clip.run)."""
    return [f"results/clip/{split}/{m}.json" for m in ["original", "gold", *CLIP_METHOD_NAMES]]


def attack_hp(track):
    """The --hp of an attack job: the track's evaluation keys, the attacks, and the LoRA the
    relearning attack trains (the track's unlearning LoRA)."""
    evaluation = vlm_stage_hp("eval", {"seed": config["seed"], **VLM}) if track == "vlm" else {
        "seed": config["seed"], "max_len": config["text"]["max_len"], **TEXT_EVAL}  # fmt: skip
    values = {
        **evaluation,
        "attacks": config["attacks"]["kinds"],
        "relearn": config["attacks"]["relearn"],
        "lora": config[track]["unlearn"]["lora"],
    }
    if track == "vlm":
        values["freeze_vision_tower"] = VLM["finetune"]["freeze_vision_tower"]
    return hp(**values, compute=COMPUTE)


def relearn_hp():
    """The vision keys a relearning job reads: the protocol's and the attack's own."""
    keys = ["image_size", "n_enroll", "n_models", "chunk", "device", "model", "loss"]
    return hp(seed=config["seed"], attacks={"relearn": config["vision"]["attacks"]["relearn"]},
              **{k: config["vision"][k] for k in keys})  # fmt: skip
