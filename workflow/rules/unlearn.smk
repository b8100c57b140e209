UNLEARN = {k: v for k, v in config["unlearn"].items() if k not in ("methods", "l1", "modalities")}


rule text_unlearn:
    """One method, one split, l1 on or off: a new LoRA adapter on top of the original."""
    input:
        original="results/models/text/original",
        forget=f"{TEXT_DATA}/{{split}}.parquet",
        retain=lambda w: f"{TEXT_DATA}/{retain_of(w.split)}.parquet",
        code=src("unlearn/text", "unlearn/methods", "train/text", "train/qa", "train/loop"),
    output:
        directory("results/models/text/unlearn/{method}/{split}/{l1}-{modality}"),
    params:
        hp=lambda w: train_hp(
            {**UNLEARN, "l1_lambda": UNLEARN["l1_lambda"] if w.l1 == "l1" else 0.0},
            method=w.method,
        ),
    log:
        "logs/text/unlearn/{method}/{split}/{l1}-{modality}.log",
    benchmark:
        "benchmarks/text/unlearn/{method}/{split}/{l1}-{modality}.tsv"
    threads: THREADS
    resources:
        **resources(gpu=True),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench unlearn --hp {params.hp:q} --threads {threads}"
        " --original {input.original} --forget {input.forget} --retain {input.retain}"
        " --out {output} > {log} 2>&1"


# phase targets, one per method: what a dvc.yaml `unlearn@<method>` stage asks Snakemake for
for _method in METHOD_NAMES:

    rule:
        name:
            f"unlearn_{_method}"
        input:
            [
                model_dir("text", split, f"{_method}-{l1}-{mod}")
                for split in SPLITS
                for l1 in L1_TAGS
                for mod in MODALITIES["text"]
            ],
