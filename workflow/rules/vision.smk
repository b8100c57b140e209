# The vision track (DESIGN section 8): pretrain the biometric ResNet on the celebrity pool, train
# the M protocol models (original and gold) in chunks, unlearn every chunk with every method,
# collect each model family's scores, then Table 2 / Figure 6. A chunk is one vmapped ensemble:
# one job, which also scores its own models (a job mostly pays for imports and data loading).
VISION = config.get("vision", {})
VISION_ON = "vision" in config["tracks"]
VISION_METHOD_NAMES = VISION.get("methods", [])
VISION_FAMILIES = ["original", "gold", *VISION_METHOD_NAMES]
# F is the authors of the largest forget split (data/clear.py, vision_roles)
VISION_SPLIT = max(FRACTIONS, key=lambda name: int(name[len("forget") :]))
VISION_CHUNKS = dag.vision_chunks(config)
VISION_CODE = ("vision/protocol", "vision/model", "vision/ensemble", "vision/mia")
VISION_DATA = dict(full=f"{CLEAR_DATA}/full.parquet", split=f"{CLEAR_DATA}/vision_split.parquet")


VISION_OUTPUTS = [
    "results/vision/table2.csv",
    "results/vision/table2.md",
    "results/vision/figure6.png",
]


rule vision_pretrain:
    """The paper's celebrity pretraining: one biometric model on identities not in CLEAR."""
    input:
        celebs=f"{CLEAR_DATA}/celebs.parquet",
        code=src(*VISION_CODE),
    output:
        directory("results/models/vision/pretrained"),
    params:
        hp=lambda w: vision_hp("pretrain"),
    log:
        "logs/vision/pretrain.log",
    benchmark:
        "benchmarks/vision/pretrain.tsv"
    threads: THREADS
    resources:
        **resources("vision_pretrain"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vision pretrain --hp {params.hp:q} --threads {threads}"
        " --celebs {input.celebs} --out {output} > {log} 2>&1"


rule vision_train:
    """One chunk of the M protocol models: original (F or H plus a random half of the others)
    or gold (the same without the model's forget side)."""
    input:
        **VISION_DATA,
        pretrained="results/models/vision/pretrained",
        code=src(*VISION_CODE),
    output:
        state="results/models/vision/{family}/models{chunk}.pt",
        scores="results/models/vision/{family}/models{chunk}.scores.parquet",
        meta="results/models/vision/{family}/models{chunk}.json",
    wildcard_constraints:
        family="original|gold",
    params:
        hp=lambda w: vision_hp("train"),
        gold=lambda w: "--gold" if w.family == "gold" else "",
        models=lambda w: w.chunk.replace("-", ":"),
    log:
        "logs/vision/{family}/models{chunk}.log",
    benchmark:
        "benchmarks/vision/{family}/models{chunk}.tsv"
    threads: THREADS
    resources:
        **resources("vision_train"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vision train --hp {params.hp:q} --threads {threads}"
        " --full {input.full} --split {input.split} --pretrained {input.pretrained}"
        " {params.gold} --models {params.models} --out {output.state}"
        " --scores {output.scores} --meta {output.meta} > {log} 2>&1"


rule vision_unlearn:
    """Every model of one chunk unlearns its own forget side with one method."""
    input:
        **VISION_DATA,
        state="results/models/vision/original/models{chunk}.pt",
        code=src(*VISION_CODE, "vision/methods", "vision/registry", "unlink", "hparams"),
    output:
        state="results/models/vision/unlearn/{vmethod}/models{chunk}.pt",
        scores="results/models/vision/unlearn/{vmethod}/models{chunk}.scores.parquet",
        meta="results/models/vision/unlearn/{vmethod}/models{chunk}.json",
    params:
        hp=lambda w: vision_hp(method=w.vmethod),
    log:
        "logs/vision/unlearn/{vmethod}/models{chunk}.log",
    benchmark:
        "benchmarks/vision/unlearn/{vmethod}/models{chunk}.tsv"
    threads: THREADS
    resources:
        **resources("vision_unlearn"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vision unlearn --hp {params.hp:q} --threads {threads}"
        " --full {input.full} --split {input.split} --state {input.state}"
        " --method {wildcards.vmethod} --out {output.state}"
        " --scores {output.scores} --meta {output.meta} > {log} 2>&1"


rule vision_score:
    """The scores table of one model family (DESIGN section 8) and its summary: U-LIRA, U-MIA,
    accuracies, status and RTE (the chunks' times add up)."""
    input:
        scores=lambda w: vision_chunks(w.family, ".scores.parquet"),
        meta=lambda w: vision_chunks(w.family, ".json"),
        code=src("vision/report", "vision/mia"),
    output:
        scores="results/vision/{family}/scores.parquet",
        summary="results/vision/{family}/summary.json",
    params:
        bootstrap=BOOTSTRAP,
    log:
        "logs/vision/score/{family}.log",
    benchmark:
        "benchmarks/vision/score/{family}.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vision collect --scores {input.scores} --meta {input.meta}"
        " --out {output.scores} --summary {output.summary} {params.bootstrap} > {log} 2>&1"


rule vision_report:
    """Table 2 (CSV + Markdown) and Figure 6 (phi of forget vs holdout, per method)."""
    input:
        scores=expand("results/vision/{family}/scores.parquet", family=VISION_FAMILIES),
        summaries=expand("results/vision/{family}/summary.json", family=VISION_FAMILIES),
        code=src("vision/report", "vision/mia"),
    output:
        table="results/vision/table2.csv",
        markdown="results/vision/table2.md",
        figure="results/vision/figure6.png",
    params:
        scores=lambda w, input: " ".join(
            f"{f}={p}" for f, p in zip(VISION_FAMILIES, input.scores, strict=True)
        ),
        summaries=lambda w, input: " ".join(
            f"{f}={p}" for f, p in zip(VISION_FAMILIES, input.summaries, strict=True)
        ),
    log:
        "logs/vision/report.log",
    benchmark:
        "benchmarks/vision/report.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vision report --scores {params.scores}"
        " --metrics {params.summaries} --figure {output.figure} --out {output.table} > {log} 2>&1"


rule vision:
    """Phase target (dvc.yaml stage `vision`)."""
    input:
        VISION_OUTPUTS if VISION_ON else [],
