TEXT_DATA = "data/text"
TEXT_TABLES = (
    ["authors", "full", "retain_eval", "real_authors", "world_facts", "background"]
    + list(FRACTIONS)
    + [retain_of(s) for s in FRACTIONS]
)


rule text_data:
    """Fictitious authors in the TOFU schema (synthesized), or the TOFU files; all splits."""
    input:
        src("data/authors", "data/tofu", "data/text"),
    output:
        expand("{d}/{t}.parquet", d=TEXT_DATA, t=TEXT_TABLES),
    params:
        hp=text_data_hp(),
        out=lambda w, output: Path(output[0]).parent,
    log:
        "logs/data/text.log",
    benchmark:
        "benchmarks/data/text.tsv"
    threads: 1
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench data-text --hp {params.hp:q} --out {params.out} > {log} 2>&1"


rule data:
    """Phase target (dvc.yaml stage `data`)."""
    input:
        rules.text_data.output,
