rule text_base:
    """Tokenizer + tiny Llama pretrained on general knowledge (or the configured checkpoint);
    the tokenizer sees the base's corpus only, never the CLEAR authors."""
    input:
        qa=expand("{d}/{t}.parquet", d=TEXT_DATA, t=["real_authors", "world_facts", "background"]),
        code=src(
            "train/text", "train/qa", "train/loop", "models/factory", "models/tokenizer", "compute"
        ),
    output:
        directory("results/models/text/base"),
    params:
        hp=train_hp(
            config["text"]["base"],
            model=config["text"]["model"],
            vocab_size=config["text"]["vocab_size"],
        ),
    log:
        "logs/text/base.log",
    benchmark:
        "benchmarks/text/base.tsv"
    threads: SOLO_THREADS
    resources:
        **resources("base"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench base --hp {params.hp:q} --threads {threads}"
        " --qa {input.qa} --out {output} > {log} 2>&1"


rule base:
    """Phase target (dvc.yaml stage `base`)."""
    input:
        rules.text_base.output,
