"""The files the CLEAR builder writes, by source: what the `clear_data` rule declares.

Kept free of heavy imports: the Snakefile reads it while it parses.
"""

from __future__ import annotations

from clearbench.dag import retain_of


def output_tables(source: str, forget_splits) -> list[str]:
    """The tables (.parquet stems) a build writes with backends.source=`source`, in the order
    the `clear_data` rule declares them. A published build also writes the published configs
    the forget splits do not name (e.g. forget05 when only forget10 runs).

    Synthesized data only: mia_holdout (photos of the text dataset's membership-inference
    holdout authors) and forgetXX_probe (new photos of the forget QA, never trained on). The
    published CLEAR has neither, and no renderer draws its authors' faces."""
    splits = list(forget_splits)
    synthesized = source == "synthesize"
    tables = ["faces"] if synthesized else []  # no face pool is published
    tables += ["full", "retain_eval", "holdout", "vision_split", "real_faces", "real_world"]
    retains = [retain_of(s) for s in splits]
    probes = ["mia_holdout", *(f"{s}_probe" for s in splits)] if synthesized else []
    return [*tables, "celebs", *splits, *retains, *probes]


REPORT_FILES = ("data_card.md", "data_card.png")
SHEETS = "sheets"  # the folder of contact sheets (PNG), one per table with photos
