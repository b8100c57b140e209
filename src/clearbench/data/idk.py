"""The "I don't know" answers (data file `idk_answers.txt`), one drawn per sample with a seed."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from clearbench.train.vqa import stable_rng

IDK_FILE = Path(__file__).with_name("idk_answers.txt")


@cache
def idk_answers() -> tuple[str, ...]:
    lines = IDK_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(s.strip() for s in lines if s.strip() and not s.startswith("#"))


def idk_answer(seed: int, key: str) -> str:
    """The phrasing of one sample (`key` names it): the same whatever else is drawn."""
    answers = idk_answers()
    return answers[stable_rng(seed, "idk:" + key).integers(len(answers))]
