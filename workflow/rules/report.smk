rule leaderboard:
    """One row per evaluated model, the failed-retain rule, the ranking; tables and plots."""
    input:
        metrics=all_metrics(),
        models=[model_dir(*Path(m).with_suffix("").parts[-3:]) for m in all_metrics()],
        code=src("report/leaderboard"),
    output:
        csv="results/leaderboard.csv",
        tables=directory("results/tables"),
        plots=directory("results/plots"),
    params:
        hp=hp(**config["report"]),
    log:
        "logs/report/leaderboard.log",
    benchmark:
        "benchmarks/report/leaderboard.tsv"
    threads: 1
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench leaderboard --hp {params.hp:q} --metrics {input.metrics}"
        " --models {input.models} --tables {output.tables} --plots {output.plots}"
        " --out {output.csv} > {log} 2>&1"
