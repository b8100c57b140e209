rule leaderboard:
    """One row per evaluated model, the collapse rules, both rankings; the paper's tables,
    per-track tables and plots, the unlearning loss curves."""
    input:
        metrics=all_metrics(),
        attacks=dag.all_attack_metrics(config),
        relearn=expand("results/vision/{family}/relearn.json", family=RELEARNED),
        models=[model_dir(*Path(m).with_suffix("").parts[-3:]) for m in all_metrics()],
        vision=(
            expand("results/vision/{family}/summary.json", family=VISION_FAMILIES)
            if VISION_ON
            else []
        ),
        # so that the README's one command also brings Table 2, Figure 6 and the data card
        vision_report=VISION_OUTPUTS if VISION_ON else [],
        clip=[s for split in SPLITS for s in clip_summaries(split)] if CLIP_ON else [],
        clip_tables=CLIP_OUTPUTS if CLIP_ON else [],
        data_card=CLEAR_OUTPUTS if config["data"]["clear"]["build"] else [],
        authors=[dag.authors_metrics_file(*Path(m).with_suffix("").parts[-3:]) for m in all_metrics()],
        code=src("report/leaderboard", "report/attacks", "report/uncertainty", "unlearn/registry",
                 "vision/registry", "hparams"),
    output:
        csv="results/leaderboard.csv",
        tables=directory("results/tables"),
        plots=directory("results/plots"),
    params:
        hp=hp(**config["report"]),
        vision=lambda w, input: (
            f"--vision {' '.join(input.vision)} --vision-split {VISION_SPLIT}" if VISION_ON else ""
        ),
        clip=lambda w, input: f"--clip {' '.join(input.clip)}" if CLIP_ON else "",
        attacks=lambda w, input: f"--attacks {' '.join(input.attacks)}" if input.attacks else "",
        relearn=lambda w, input: f"--relearn {' '.join(input.relearn)}" if input.relearn else "",
    log:
        "logs/report/leaderboard.log",
    benchmark:
        "benchmarks/report/leaderboard.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench leaderboard --hp {params.hp:q} --metrics {input.metrics}"
        " --models {input.models} {params.vision} {params.clip} {params.attacks} {params.relearn}"
        " --authors {input.authors}"
        " --tables {output.tables}"
        " --plots {output.plots}"
        " --out {output.csv} > {log} 2>&1"


rule html_report:
    """One self-contained HTML page (images embedded): the leaderboard, the paper's tables,
    every plot, Table 2 / Figure 6 and the CLEAR data card and contact sheets."""
    input:
        csv=rules.leaderboard.output.csv,
        tables=rules.leaderboard.output.tables,
        plots=rules.leaderboard.output.plots,
        vision_report=VISION_OUTPUTS if VISION_ON else [],
        clip_tables=CLIP_OUTPUTS if CLIP_ON else [],
        data_card=CLEAR_OUTPUTS if config["data"]["clear"]["build"] else [],
        code=src("report/html"),
    output:
        "results/report.html",
    params:
        # the folders of the optional inputs; without them the page says what it skipped
        vision=f"--vision {Path(VISION_OUTPUTS[0]).parent}" if VISION_ON else "",
        images=f"--images {CLEAR_DATA}" if config["data"]["clear"]["build"] else "",
        clip=(
            "--clip " + " ".join(f"results/clip/{split}" for split in SPLITS) if CLIP_ON else ""
        ),
    log:
        "logs/report/html_report.log",
    benchmark:
        "benchmarks/report/html_report.tsv"
    threads: 1
    resources:
        **resources("cpu"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench report-html --leaderboard {input.csv} --tables {input.tables}"
        " --plots {input.plots} {params.vision} {params.images} {params.clip} --out {output}"
        " > {log} 2>&1"
