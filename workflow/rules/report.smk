rule leaderboard:
    """One row per evaluated model, the collapse rules, both rankings; the paper's tables,
    per-track tables and plots, the unlearning loss curves."""
    input:
        metrics=all_metrics(),
        models=[model_dir(*Path(m).with_suffix("").parts[-3:]) for m in all_metrics()],
        vision=(
            expand("results/vision/{family}/summary.json", family=VISION_FAMILIES)
            if VISION_ON
            else []
        ),
        # so that the README's one command also brings Table 2, Figure 6 and the data card
        vision_report=VISION_OUTPUTS if VISION_ON else [],
        data_card=CLEAR_OUTPUTS if config["data"]["clear"]["build"] else [],
        code=src("report/leaderboard"),
    output:
        csv="results/leaderboard.csv",
        tables=directory("results/tables"),
        plots=directory("results/plots"),
    params:
        hp=hp(**config["report"]),
        vision=lambda w, input: (
            f"--vision {' '.join(input.vision)} --vision-split {VISION_SPLIT}" if VISION_ON else ""
        ),
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
        " --models {input.models} {params.vision} --tables {output.tables} --plots {output.plots}"
        " --out {output.csv} > {log} 2>&1"
