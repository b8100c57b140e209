from clearbench.data.outputs import REPORT_FILES as CLEAR_REPORT_FILES
from clearbench.data.outputs import SHEETS as CLEAR_SHEETS_DIR
from clearbench.data.outputs import output_tables as clear_output_tables

TEXT_DATA = "data/text"
TEXT_TABLES = (
    ["authors", "full", "retain_eval", "real_authors", "world_facts", "background"]
    + ["mia_holdout", "mia_holdout_authors"]
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
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench data-text --hp {params.hp:q} --out {params.out} > {log} 2>&1"


CLEAR_DATA = "data/clear"
# what the builder writes for this source: the published dataset has no face pool (faces), and
# its celebs are synthesized (backends.celebs) as the paper's Celebs set was not published
CLEAR_TABLES = clear_output_tables(config["data"]["clear"]["backends"]["source"], FRACTIONS)
CLEAR_FILES = expand("{d}/{t}.parquet", d=CLEAR_DATA, t=CLEAR_TABLES) + [
    f"{CLEAR_DATA}/{name}" for name in CLEAR_REPORT_FILES
]
CLEAR_SHEETS = f"{CLEAR_DATA}/{CLEAR_SHEETS_DIR}"
CLEAR_OUTPUTS = [*CLEAR_FILES, CLEAR_SHEETS]


rule clear_data:
    """Face pool -> attributes -> author/face matching -> age edit -> personalized photos (best
    of N) -> captions -> splits, contact sheets and data card (DESIGN section 4); or the
    published CLEAR mapped to the same tables, plus synthesized celebs."""
    input:
        text=expand("{d}/{t}.parquet", d=TEXT_DATA, t=TEXT_TABLES),
        code=src("data/clear", "data/scenes", "data/faces", "data/backends"),
    output:
        CLEAR_FILES,
        directory(CLEAR_SHEETS),
    params:
        hp=clear_data_hp(),
        text=lambda w, input: Path(input.text[0]).parent,
        out=lambda w, output: Path(output[0]).parent,
    log:
        "logs/data/clear.log",
    benchmark:
        "benchmarks/data/clear.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench data-clear --hp {params.hp:q} --text {params.text}"
        " --out {params.out} > {log} 2>&1"


rule data:
    """Phase target (dvc.yaml stage `data`)."""
    input:
        rules.text_data.output,
        CLEAR_OUTPUTS if config["data"]["clear"]["build"] else [],
