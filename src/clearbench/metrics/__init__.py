"""Metrics computed from per-sample eval tables (DESIGN.md section 6)."""

from clearbench.metrics.text import (
    forget_quality_js,
    log10_forget_quality,
    per_sample_truth_ratio,
    score_table,
)

__all__ = ["forget_quality_js", "log10_forget_quality", "per_sample_truth_ratio", "score_table"]
