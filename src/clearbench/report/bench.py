"""Roll up Snakemake's benchmark files: which jobs took the time and the memory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def collect(folder: str | Path = "benchmarks") -> pd.DataFrame:
    rows = []
    for tsv in sorted(Path(folder).rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        rows.append(
            {
                "job": str(tsv.relative_to(folder).with_suffix("")),
                "wall_s": df["s"].median(),
                "cpu_s": df["cpu_time"].median(),
                "max_rss_mb": df["max_rss"].max(),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no benchmark files under {folder}/ (run the pipeline first)")
    return pd.DataFrame(rows).sort_values("wall_s", ascending=False, ignore_index=True)


def summary(folder: str | Path = "benchmarks", top: int = 10) -> str:
    df = collect(folder)
    lines = [f"{len(df)} jobs, {df.wall_s.sum() / 60:.1f} min of job wall time, "
             f"{df.cpu_s.sum() / 60:.1f} min CPU; slowest:"]  # fmt: skip
    lines += [f"  {r.wall_s:8.1f} s  {r.cpu_s:8.1f} s cpu  {r.max_rss_mb:7.0f} MB  {r.job}"
              for r in df.head(top).itertuples()]  # fmt: skip
    return "\n".join(lines)
