rule text_eval:
    """The per-sample table of one model (DESIGN section 6)."""
    input:
        model=lambda w: model_dir("text", w.split, w.model),
        loaded_with=lambda w: loaded_with("text", w.model),
        tasks=lambda w: list(text_tasks(w.split).values()),
        code=src("eval/text", "metrics/__init__", "train/qa", "models/factory", "compute"),
    output:
        "results/eval/text/{split}/{model}.parquet",
    params:
        tasks=lambda w: " ".join(f"--task {t}={p}" for t, p in text_tasks(w.split).items()),
        hp=hp(
            seed=config["seed"], max_len=config["text"]["max_len"], compute=COMPUTE, **TEXT_EVAL
        ),
    log:
        "logs/eval/text/{split}/{model}.log",
    benchmark:
        "benchmarks/eval/text/{split}/{model}.tsv"
    threads: THREADS
    resources:
        **resources("eval"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench eval --hp {params.hp:q} --threads {threads}"
        " --model {input.model} {params.tasks} --out {output} > {log} 2>&1"


rule metrics:
    """Scores from the per-sample table alone, forget quality against the split's gold model."""
    input:
        table="results/eval/{track}/{split}/{model}.parquet",
        gold="results/eval/{track}/{split}/gold.parquet",
        code=src("metrics/text", "metrics/resample", "metrics/__init__"),
    output:
        ours="results/metrics/{track}/{split}/{model}.json",
        authors="results/metrics_authors/{track}/{split}/{model}.json",
    params:
        mink_k=config["eval"]["mink_k"],
        bootstrap=BOOTSTRAP,
    log:
        "logs/metrics/{track}/{split}/{model}.log",
    benchmark:
        "benchmarks/metrics/{track}/{split}/{model}.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench metrics {input.table} --gold {input.gold}"
        " --mink-k {params.mink_k} {params.bootstrap} --out {output.ours}"
        " --authors-out {output.authors} > {log} 2>&1"


rule evaluate:
    """Phase target (dvc.yaml stage `evaluate`): every per-sample table and metrics file."""
    input:
        all_metrics(),
