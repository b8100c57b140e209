"""A method's hyperparameter declaration (name -> Param), shared by the language and the vision
registries and checked against params before any job runs (clearbench.config). No torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, an optional range (`low`/`high` inclusive, `above`
    exclusive) or a set of allowed values. An int is accepted where a float is declared."""

    kind: type
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple | None = None

    def problem(self, value) -> str | None:
        """What is wrong with `value`, or None."""
        accepted = (int, float) if self.kind is float else self.kind
        if (isinstance(value, bool) and self.kind is not bool) or not isinstance(value, accepted):
            return f"{value!r} is not of type '{self.kind.__name__}'"
        if self.choices is not None and value not in self.choices:
            return f"{value!r} is not one of {list(self.choices)}"
        if self.low is not None and value < self.low:
            return f"{value!r} is less than the minimum of {self.low}"
        if self.above is not None and value <= self.above:
            return f"{value!r} is less than or equal to the minimum of {self.above}"
        if self.high is not None and value > self.high:
            return f"{value!r} is greater than the maximum of {self.high}"
        return None


def param(declared: Param | type) -> Param:
    """A bare type declares a hyperparameter with no range."""
    return declared if isinstance(declared, Param) else Param(declared)


# the usual declarations
WEIGHT = Param(float, low=0)  # a loss weight: 0 switches its term off
POSITIVE = Param(float, above=0)  # a scale or temperature that divides
SEED = Param(int, low=0)
