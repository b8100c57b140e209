# Is it really forgotten? (clearbench.attacks) Each attacked model of a language track is
# re-evaluated on its forget tasks as it is, on reworded questions (and, vlm, photos never
# trained on), quantized to 8 and 4 bits, and after a few relearning steps on a forget slice or
# on retain data; the vision track's models are relearned and scored again (relearn_u_lira).
ATTACKS = config.get("attacks") or {}
RELEARNED = dag.relearned_families(config)
ATTACK_CODE = ("attacks", "eval/text", "eval/vlm", "metrics/__init__", "metrics/text", *VLM_CODE)


rule text_attack:
    """The attacks on one text model: a per-sample table of its forget task per attack."""
    input:
        model=lambda w: model_dir("text", w.split, w.model),
        loaded_with=lambda w: loaded_with("text", w.model),
        forget=f"{TEXT_DATA}/{{split}}.parquet",
        retain=lambda w: f"{TEXT_DATA}/{retain_of(w.split)}.parquet",
        code=src(*ATTACK_CODE),
    output:
        "results/attacks/text/{split}/{model}.parquet",
    params:
        hp=attack_hp("text") if ATTACKS else "",
    log:
        "logs/attacks/text/{split}/{model}.log",
    benchmark:
        "benchmarks/attacks/text/{split}/{model}.tsv"
    threads: THREADS
    resources:
        **resources("attack"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench attack --track text --hp {params.hp:q} --threads {threads}"
        " --model {input.model} --forget {input.forget} --retain {input.retain}"
        " --out {output} > {log} 2>&1"


rule vlm_attack:
    """The attacks on one vlm model: its forget tasks (QA and face recognition) per attack."""
    input:
        **VLM_DATA,
        model=lambda w: model_dir("vlm", w.split, w.model),
        loaded_with=lambda w: loaded_with("vlm", w.model),
        code=src(*ATTACK_CODE),
    output:
        "results/attacks/vlm/{split}/{model}.parquet",
    params:
        hp=attack_hp("vlm") if ATTACKS and VLM_ON else "",
    log:
        "logs/attacks/vlm/{split}/{model}.log",
    benchmark:
        "benchmarks/attacks/vlm/{split}/{model}.tsv"
    threads: THREADS
    resources:
        **resources("attack"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench attack --track vlm --hp {params.hp:q} --threads {threads}"
        f" --model {{input.model}} --clear {CLEAR_DATA} --text {TEXT_DATA}"
        " --split {wildcards.split} --out {output} > {log} 2>&1"


rule attack_metrics:
    """The Forget metric of each attack, from the attacks' per-sample table alone."""
    input:
        table="results/attacks/{track}/{split}/{model}.parquet",
        code=src("attacks", "metrics/text", "metrics/__init__"),
    output:
        "results/attacks/{track}/{split}/{model}.json",
    log:
        "logs/attacks/{track}/{split}/{model}.metrics.log",
    benchmark:
        "benchmarks/attacks/{track}/{split}/{model}.metrics.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench attack-metrics {input.table} --out {output} > {log} 2>&1"


rule vision_relearn:
    """Every model of one chunk of a family (targets and shadows alike) relearns a slice of its
    own forget side's photos, then is scored without them."""
    input:
        **VISION_DATA,
        state=lambda w: vision_chunks(w.family, ".pt")[VISION_CHUNKS.index(w.chunk)],
        code=src(*VISION_CODE),
    output:
        scores="results/models/vision/relearn/{family}/models{chunk}.scores.parquet",
        meta="results/models/vision/relearn/{family}/models{chunk}.json",
    params:
        hp=relearn_hp() if RELEARNED else "",
    log:
        "logs/vision/relearn/{family}/models{chunk}.log",
    benchmark:
        "benchmarks/vision/relearn/{family}/models{chunk}.tsv"
    threads: THREADS
    resources:
        **resources("attack"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vision relearn --hp {params.hp:q} --threads {threads}"
        " --full {input.full} --split {input.split} --state {input.state}"
        " --out {output.scores} --meta {output.meta} > {log} 2>&1"


rule vision_relearn_score:
    """A family's scores after relearning and their summary (its U-LIRA: relearn_u_lira)."""
    input:
        scores=lambda w: [
            f"results/models/vision/relearn/{w.family}/models{c}.scores.parquet"
            for c in VISION_CHUNKS
        ],
        meta=lambda w: [f"results/models/vision/relearn/{w.family}/models{c}.json" for c in VISION_CHUNKS],
        code=src("vision/report", "vision/mia"),
    output:
        scores="results/vision/{family}/relearn_scores.parquet",
        summary="results/vision/{family}/relearn.json",
    log:
        "logs/vision/relearn/{family}.log",
    benchmark:
        "benchmarks/vision/relearn/{family}.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vision collect --scores {input.scores} --meta {input.meta}"
        " --out {output.scores} --summary {output.summary} > {log} 2>&1"


rule attacks:
    """Phase target: every attack on every attacked model."""
    input:
        dag.all_attack_metrics(config),
        expand("results/vision/{family}/relearn.json", family=RELEARNED) if RELEARNED else [],

