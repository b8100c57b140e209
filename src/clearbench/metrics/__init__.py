"""Metrics computed from per-sample eval tables (DESIGN.md section 6); see metrics/text.py."""

__all__ = [
    "forget_quality_js",
    "log10_forget_quality",
    "membership_aucs",
    "per_sample_truth_ratio",
    "privleak",
    "score_table",
]

# Parquet metadata: the evaluated model's status (eval writes it, metrics reads it). Defined here,
# not in metrics.text, so that eval does not import rouge_score and scipy (~0.6 s a job).
STATUS_KEY = b"clearbench.status"


def __getattr__(name):
    # Re-exported lazily: importing metrics.text here would make `python -m
    # clearbench.metrics.text` print a runpy RuntimeWarning on stderr.
    if name in __all__:
        from clearbench.metrics import text

        return getattr(text, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
