# Unlearning on the language tracks (DESIGN section 7): every method of unlearn.methods, one
# registry for text and vlm (the vlm rules are in vlm.smk), without and with the LoRA l1 penalty.
UNLEARN_CODE = (
    "unlearn/run",
    "unlearn/methods",
    "unlearn/registry",
    "unlearn/edit",
    "unlink",
    "hparams",
    "data/idk",
    "train/text",
    "train/qa",
    "train/vqa",
    "train/loop",
    "models/factory",
    "compute",
)
IDK_ANSWERS = f"{SRC}/data/idk_answers.txt"


rule text_idk_reference:
    """DPO's reference: the original tuned to answer the forget questions "I don't know"."""
    input:
        original="results/models/text/original",
        base="results/models/text/base",  # the base of the original's adapter
        forget=f"{TEXT_DATA}/{{split}}.parquet",
        retain=lambda w: f"{TEXT_DATA}/{retain_of(w.split)}.parquet",
        idk=IDK_ANSWERS,
        code=src(*UNLEARN_CODE),
    output:
        directory("results/models/text/reference/{split}"),
    params:
        hp=unlearn_hp("text", None, "nol1"),
    log:
        "logs/text/reference/{split}.log",
    benchmark:
        "benchmarks/text/reference/{split}.tsv"
    threads: THREADS
    resources:
        **resources("unlearn"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench idk-reference --track text --hp {params.hp:q} --threads {threads}"
        " --original {input.original} --forget {input.forget} --retain {input.retain}"
        " --out {output} > {log} 2>&1"


rule text_unlearn:
    """One method, one split, l1 on or off: a new LoRA adapter on top of the original."""
    input:
        original="results/models/text/original",
        base="results/models/text/base",  # the base of the original's adapter
        forget=f"{TEXT_DATA}/{{split}}.parquet",
        retain=lambda w: f"{TEXT_DATA}/{retain_of(w.split)}.parquet",
        reference=lambda w: dpo_reference("text", w),
        idk=IDK_ANSWERS,
        code=src(*UNLEARN_CODE),
    output:
        directory("results/models/text/unlearn/{method}/{split}/{l1}-{modality}"),
    wildcard_constraints:
        modality="text",
    params:
        hp=lambda w: unlearn_hp("text", w.method, w.l1),
        reference=lambda w, input: f"--reference {input.reference}" if input.reference else "",
    log:
        "logs/text/unlearn/{method}/{split}/{l1}-{modality}.log",
    benchmark:
        "benchmarks/text/unlearn/{method}/{split}/{l1}-{modality}.tsv"
    threads: THREADS
    resources:
        **resources("unlearn"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench unlearn --track text --hp {params.hp:q} --threads {threads}"
        " --original {input.original} --forget {input.forget} --retain {input.retain}"
        " {params.reference} --out {output} > {log} 2>&1"


rule reference:
    """Phase target (dvc.yaml stage `reference`): DPO's IDK-tuned reference of each language
    track and split."""
    input:
        expand("results/models/{track}/reference/{split}", track=LANGUAGE_TRACKS, split=SPLITS),


# phase targets, one per method: what a dvc.yaml `unlearn@<method>` stage asks Snakemake for
for _method in METHOD_NAMES:

    rule:
        name:
            f"unlearn_{_method}"
        input:
            [
                model_dir(track, split, model)
                for track in LANGUAGE_TRACKS
                for split in SPLITS
                for model in unlearned_models(track)
                if model.split("-")[0] == _method
            ],
