# clearbench: the CLEAR unlearning benchmark as one DAG.
#   snakemake --cores 2 results/leaderboard.csv                       (default profile)
#   snakemake --cores 2 results/leaderboard.csv --configfile config/smoke.yaml
import os
import sys

from snakemake.utils import min_version

min_version("9.0")


envvars:
    "PATH",


# jobs call `python -m clearbench`: make that the interpreter running Snakemake (e.g. .venv's),
# even when the environment was not activated
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# the same bytes from the same run: without it, set order differs per process (peft writes its
# target_modules set into adapter_config.json in that order)
os.environ.setdefault("PYTHONHASHSEED", "0")


# anchored to the workflow, so `--directory elsewhere` still reads this project's parameters
configfile: f"{workflow.basedir}/params.yaml"


include: "workflow/rules/common.smk"
wildcard_constraints:
    split="forget[0-9]{2}",
    method="|".join(sorted(METHODS)),
    l1="l1|nol1",
    modality="text|visual|both",
    track="text|vlm",
    vmethod="|".join(sorted(VISION_METHODS)),
    family="|".join(["original", "gold", *sorted(VISION_METHODS)]),
    cmethod="|".join(sorted(CLIP_METHODS)),
    chunk="[0-9]+-[0-9]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/unlearn.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/vision.smk"
include: "workflow/rules/vlm.smk"
include: "workflow/rules/clip.smk"
include: "workflow/rules/attacks.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/leaderboard.csv",
        "results/report.html",
        CLEAR_OUTPUTS if config["data"]["clear"]["build"] else [],
        VISION_OUTPUTS if VISION_ON else [],
        CLIP_OUTPUTS if CLIP_ON else [],


# last, once the parameters are known good: a run killed with its jobs leaves no stale lock, and
# outputs that DVC restored do not look older than their inputs (clearbench.restored)
if workflow.is_main_process:  # not the per-job processes of a cluster executor
    from clearbench.dvc_stages import out_of_date
    from clearbench.restored import align_restored_mtimes
    from clearbench.resume import clear_stale_run

    clear_stale_run()
    align_restored_mtimes()
    if warning := out_of_date():
        print(warning, file=sys.stderr)
