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


def bootstrap_level(text: str) -> float:
    level = float(text)
    if not 0 < level < 1:
        raise ValueError(text)  # argparse: "invalid bootstrap_level value"
    return level


def bootstrap_count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise ValueError(text)
    return n


def add_bootstrap_arguments(parser, what: str) -> None:
    """--bootstrap N, --bootstrap-seed, --level of the scoring CLIs (metrics, mia, vision
    collect): intervals <key>_lo/<key>_hi from N resamples of `what`."""
    parser.add_argument("--bootstrap", type=bootstrap_count, default=0, metavar="N",
                        help=f"add <key>_lo/<key>_hi: percentile intervals from N resamples of "
                        f"{what} (default 0: none)")  # fmt: skip
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="the resampling's seed")
    parser.add_argument("--level", type=bootstrap_level, default=0.95,
                        help="the intervals' level, in (0, 1) (default 0.95)")  # fmt: skip


def __getattr__(name):
    # Re-exported lazily: importing metrics.text here would make `python -m
    # clearbench.metrics.text` print a runpy RuntimeWarning on stderr.
    if name in __all__:
        from clearbench.metrics import text

        return getattr(text, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
