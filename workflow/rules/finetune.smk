# tiny models trained at a high learning rate keep general knowledge only if they rehearse it
REPLAY = (
    expand("{d}/{t}.parquet", d=TEXT_DATA, t=["real_authors", "world_facts"])
    if config["text"]["finetune"]["replay"]
    else []
)


rule text_original:
    """LoRA finetuning on every author: the model that knows the forget set."""
    input:
        base="results/models/text/base",
        data=f"{TEXT_DATA}/full.parquet",
        replay=REPLAY,
        code=src("train/text", "train/qa", "train/loop", "models/factory", "compute"),
    output:
        directory("results/models/text/original"),
    params:
        hp=train_hp(config["text"]["finetune"]),
    log:
        "logs/text/original.log",
    benchmark:
        "benchmarks/text/original.tsv"
    threads: THREADS
    resources:
        **resources("finetune"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench finetune --hp {params.hp:q} --threads {threads}"
        " --base {input.base} --data {input.data} --replay {input.replay} --out {output} > {log} 2>&1"


rule text_gold:
    """The same finetuning on the retain set only: the reference forget quality compares to."""
    input:
        base="results/models/text/base",
        data=lambda w: f"{TEXT_DATA}/{retain_of(w.split)}.parquet",
        replay=REPLAY,
        code=src("train/text", "train/qa", "train/loop", "models/factory", "compute"),
    output:
        directory("results/models/text/gold/{split}"),
    params:
        hp=train_hp(config["text"]["finetune"]),
    log:
        "logs/text/gold/{split}.log",
    benchmark:
        "benchmarks/text/gold/{split}.tsv"
    threads: THREADS
    resources:
        **resources("finetune"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench finetune --hp {params.hp:q} --threads {threads}"
        " --base {input.base} --data {input.data} --replay {input.replay} --out {output} > {log} 2>&1"


rule finetune:
    """Phase target (dvc.yaml stage `finetune`)."""
    input:
        rules.text_original.output,
        expand("results/models/text/gold/{split}", split=SPLITS),
