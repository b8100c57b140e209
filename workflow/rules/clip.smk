# The clip track (DESIGN section 7): a dual encoder trained contrastively on "a photo of {name}"
# (every CLEAR author and every famous person), its gold model without the forget authors, and
# every zero-shot unlearning method on the original; each job evaluates its own model (zero-shot
# identification on held-out photos), then one table per split.
CLIP = config.get("clip") or {}
CLIP_ON = "clip" in config["tracks"]
CLIP_METHOD_NAMES = CLIP.get("methods", [])
CLIP_CODE = (
    "clip/run",
    "clip/model",
    "clip/data",
    "clip/train",
    "clip/task",
    "clip/report",
    "models/factory",
    "models/tokenizer",
    "compute",
    "vision/protocol",  # load_images, merge
)
CLIP_DATA = dict(full=f"{CLEAR_DATA}/full.parquet", real_faces=f"{CLEAR_DATA}/real_faces.parquet")
CLIP_OUTPUTS = [
    f"results/clip/{split}/table.{ext}" for split in SPLITS for ext in ("csv", "md", "png")
]


rule clip_original:
    """The original: every identity's training photos. Evaluated once per forget split (the
    split decides only which authors count as targets)."""
    input:
        **CLIP_DATA,
        splits=expand(f"{CLEAR_DATA}/{{split}}.parquet", split=SPLITS),
        code=src(*CLIP_CODE),
    output:
        model=directory("results/models/clip/original"),
        evals=expand("results/clip/{split}/original.parquet", split=SPLITS),
        summaries=expand("results/clip/{split}/original.json", split=SPLITS),
    params:
        hp=lambda w: clip_hp(),  # a function: the template's {name} is not a wildcard
    log:
        "logs/clip/original.log",
    benchmark:
        "benchmarks/clip/original.tsv"
    threads: THREADS
    resources:
        **resources("clip"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench clip train --hp {params.hp:q} --threads {threads}"
        " --full {input.full} --real-faces {input.real_faces} --split {input.splits}"
        " --out {output.model} --eval {output.evals} --summary {output.summaries} > {log} 2>&1"


rule clip_gold:
    """The gold model of a split: trained without its forget authors' photos."""
    input:
        **CLIP_DATA,
        split=f"{CLEAR_DATA}/{{split}}.parquet",
        code=src(*CLIP_CODE),
    output:
        model=directory("results/models/clip/gold/{split}"),
        eval="results/clip/{split}/gold.parquet",
        summary="results/clip/{split}/gold.json",
    params:
        hp=lambda w: clip_hp(),  # a function: the template's {name} is not a wildcard
    log:
        "logs/clip/gold/{split}.log",
    benchmark:
        "benchmarks/clip/gold/{split}.tsv"
    threads: THREADS
    resources:
        **resources("clip"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench clip train --gold --hp {params.hp:q} --threads {threads}"
        " --full {input.full} --real-faces {input.real_faces} --split {input.split}"
        " --out {output.model} --eval {output.eval} --summary {output.summary} > {log} 2>&1"


rule clip_unlearn:
    """One method forgets the split's authors from the original (RTE: the method's wall time)."""
    input:
        **CLIP_DATA,
        split=f"{CLEAR_DATA}/{{split}}.parquet",
        original="results/models/clip/original",
        code=src(*CLIP_CODE, "clip/methods", "clip/registry", "unlink", "hparams"),
    output:
        model=directory("results/models/clip/unlearn/{cmethod}/{split}"),
        eval="results/clip/{split}/{cmethod}.parquet",
        summary="results/clip/{split}/{cmethod}.json",
    params:
        hp=lambda w: clip_hp(w.cmethod),
    log:
        "logs/clip/unlearn/{cmethod}/{split}.log",
    benchmark:
        "benchmarks/clip/unlearn/{cmethod}/{split}.tsv"
    threads: THREADS
    resources:
        **resources("clip"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench clip unlearn --method {wildcards.cmethod} --hp {params.hp:q}"
        " --threads {threads} --full {input.full} --real-faces {input.real_faces}"
        " --split {input.split} --original {input.original} --out {output.model}"
        " --eval {output.eval} --summary {output.summary} > {log} 2>&1"


rule clip_table:
    """Target, other-author and famous-people accuracy before and after each method, RTE."""
    input:
        summaries=lambda w: clip_summaries(w.split),
        code=src("clip/report"),
    output:
        csv="results/clip/{split}/table.csv",
        md="results/clip/{split}/table.md",
        png="results/clip/{split}/table.png",
    params:
        summaries=lambda w, input: " ".join(
            f"{Path(p).stem}={p}" for p in input.summaries
        ),
    log:
        "logs/clip/table/{split}.log",
    benchmark:
        "benchmarks/clip/table/{split}.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench clip table --summaries {params.summaries} --out-csv {output.csv}"
        " --out-md {output.md} --out-png {output.png} > {log} 2>&1"


rule clip:
    """Phase target: the clip track's tables."""
    input:
        CLIP_OUTPUTS if CLIP_ON else [],
