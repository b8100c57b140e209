"""The files the CLEAR builder writes, by source: what the `clear_data` rule declares.

Kept free of heavy imports: the Snakefile reads it while it parses.
"""

from __future__ import annotations

from clearbench.dag import retain_of


def output_tables(source: str, forget_splits) -> list[str]:
    """The tables (.parquet stems) a build writes with backends.source=`source`, in the order
    the `clear_data` rule declares them. A published build also writes the published configs
    the forget splits do not name (e.g. forget05 when only forget10 runs)."""
    splits = list(forget_splits)
    tables = ["faces"] if source == "synthesize" else []  # no face pool is published
    tables += ["full", "retain_eval", "holdout", "vision_split", "real_faces", "real_world"]
    retains = [retain_of(s) for s in splits]
    return [*tables, "celebs", *splits, *retains]


REPORT_FILES = ("data_card.md", "data_card.png")
SHEETS = "sheets"  # the folder of contact sheets (PNG), one per table with photos
