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
    optional: bool = False  # a language method's params section may leave it out

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

# Unlink (training-free subspace projection, clearbench.unlink), the same keys on every track:
# its forget samples, the subspace size (`k`, or `energy`: the share of the forget features'
# energy it must hold), the layers (fnmatch patterns over module names) and the variant.
UNLINK = dict(
    n_samples=Param(int, low=1),  # forget photos (in all) whose features span the subspace
    k=Param(int, low=1),
    energy=Param(float, above=0, high=1, optional=True),  # instead of k
    layers=Param(list),
    variant=Param(str, choices=("plain", "entangled")),
    n_retain=Param(int, low=1),  # retain photos (the entangled variant)
    ridge=Param(float, low=0),  # C_rr + ridge * mean eigenvalue * I before its Cholesky
    max_rows=Param(int, low=1),  # feature rows per layer (tokens, patches), seeded subsample
    seed=SEED,
)
