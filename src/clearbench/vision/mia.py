"""Vision membership-inference scoring: U-LIRA, U-MIA and identification accuracies.

Input is one scores table (results/vision/<method>/scores.parquet, DESIGN.md section 8), one row
per (model, image): model, role (target|shadow), group (forget|holdout|retain, relative to that
model), identity, sample_id (the same image across models), phi, correct.

Conventions shared by both attacks:
- Only rows in group forget (truth IN: trained on, then unlearned) or holdout (truth OUT: never
  trained on) take part; retain rows are ignored. Rows with a non-finite phi are dropped.
- Accuracy is balanced: the mean of the accuracy on target forget rows and the accuracy on target
  holdout rows. With equal counts this is plain accuracy; with unequal counts it keeps a constant
  guess at 0.5. If either class has no scored target row the score is None (undefined).
- 0.5 = forget and holdout indistinguishable (ideal unlearning), 1.0 = fully exposed.

CLI: python -m clearbench mia SCORES.parquet [--out FILE.json] [--convention clearbench|clear-authors]
                               [--bootstrap N [--bootstrap-seed S] [--level 0.95]]
"""

import argparse
import json
import sys

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from clearbench.io import atomic_path, read_parquet, write_text_atomic
from clearbench.metrics import add_bootstrap_arguments

COLUMNS = ["model", "role", "group", "identity", "sample_id", "phi", "correct"]
ROLES = {"target", "shadow"}
GROUPS = {"forget", "holdout", "retain"}
KEYS = ["u_lira", "u_mia", "forget_acc", "holdout_acc", "retain_acc"]
MIN_SCALE = 1e-6  # floor for the robust scale, so a degenerate MAD does not divide by zero
CONVENTIONS = ("clearbench", "clear-authors")  # see authors_phi
AUTHORS_EPS = 1e-45  # the authors' cv/attack.py: log(s + 1e-45) - log(1 - s + 1e-45)


def phi_from_cosine(cos, eps=1e-6):
    """Logit score of the paper (Appendix E): phi = log(s) - log(1 - s), s = max(0, cos).

    log(0) is -inf, so s is clipped to [eps, 1 - eps]: cos <= 0 maps to log(eps / (1 - eps))
    (about -13.8 for eps=1e-6) and cos = 1 to its negative; phi is finite and non-decreasing in cos.
    """
    s = np.clip(np.asarray(cos, dtype=np.float64), eps, 1.0 - eps)
    return np.log(s) - np.log1p(-s)


def validate_scores(df):
    """Raise ValueError (one line) if df is not a valid scores table."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")
    for col in COLUMNS:
        if df[col].isna().any() and col != "phi":
            raise ValueError(f"column '{col}' has null values")
    for col, allowed in (("role", ROLES), ("group", GROUPS)):
        bad = sorted(set(df[col].astype(str)) - allowed)
        if bad:
            raise ValueError(
                f"column '{col}' has invalid value(s) {bad[:5]}; allowed {sorted(allowed)}"
            )
    if not pd.api.types.is_numeric_dtype(df["phi"]):
        raise ValueError("column 'phi' is not numeric")
    if not (pd.api.types.is_bool_dtype(df["correct"]) or df["correct"].isin([0, 1]).all()):
        raise ValueError("column 'correct' is not boolean")


def check_roles(df):
    """Raise ValueError (one line) unless every role and the forget/holdout groups have rows: the
    attacks need target and shadow models, each with forget and holdout samples."""
    for col, needed in (("role", sorted(ROLES)), ("group", ["forget", "holdout"])):
        absent = [v for v in needed if not (df[col] == v).any()]
        if absent:
            raise ValueError(f"no rows with {col} {', '.join(map(repr, absent))}")


def read_scores(path, whole: bool = False) -> pd.DataFrame:
    """A valid scores table (`whole`: a model family's, with every role), or a one-line
    ValueError naming the file (missing, truncated, not Parquet, bad or missing columns)."""
    df = read_parquet(path)
    try:
        validate_scores(df)
        if whole:
            check_roles(df)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return df


def _attack_rows(scores, role):
    """Rows of the given role in groups forget/holdout with finite phi, plus an is_in label."""
    df = scores[(scores["role"] == role) & scores["group"].isin(["forget", "holdout"])]
    df = df[np.isfinite(df["phi"].to_numpy(dtype=np.float64))]
    return df.assign(is_in=(df["group"] == "forget").to_numpy())


def _balanced_accuracy(pred_in, is_in):
    pred_in, is_in = np.asarray(pred_in, bool), np.asarray(is_in, bool)
    if is_in.all() or not is_in.any():
        return None  # one class missing: balanced accuracy undefined
    return float(0.5 * (pred_in[is_in].mean() + (~pred_in[~is_in]).mean()))


def _robust_scale(v):
    v = np.asarray(v, dtype=np.float64)
    return max(np.median(np.abs(v - np.median(v))) / 0.6745, MIN_SCALE)


def _norm_logpdf(x, mu, s):
    return -0.5 * ((x - mu) / s) ** 2 - np.log(s)  # the shared -0.5*log(2*pi) cancels


def u_lira(scores):
    """Per-example U-LIRA (Hayes et al. 2024): balanced attack accuracy on target models.

    For each sample_id, IN = phi on shadow models where it is in group forget, OUT = phi on shadow
    models where it is in group holdout. Each side gets a Gaussian with location = median and
    scale = max(MAD / 0.6745, 1e-6). A target example is predicted IN iff
    N_in / (N_in + N_out) > 0.5, computed as logpdf_in > logpdf_out (no underflow; a tie, e.g.
    the 0/0 case, is OUT). Examples with no IN or no OUT shadow value are skipped.
    Returns None if nothing can be scored.
    """
    pairs = lira_predictions(scores)
    return None if pairs is None else _balanced_accuracy(*pairs)


def lira_predictions(scores):
    """(predicted IN, truly IN) per scored target row of U-LIRA, or None."""
    shadows, targets = _attack_rows(scores, "shadow"), _attack_rows(scores, "target")
    if shadows.empty or targets.empty:
        return None
    fit = shadows.groupby(["sample_id", "is_in"])["phi"].agg(mu="median", s=_robust_scale)
    fit = fit.unstack("is_in")
    fit.columns = [f"{name}_{'in' if side else 'out'}" for name, side in fit.columns]
    need = ["mu_in", "s_in", "mu_out", "s_out"]
    fit = fit.reindex(columns=need).dropna()  # skip examples lacking shadows on either side
    t = targets.join(fit, on="sample_id", how="inner")
    if t.empty:
        return None
    phi = t["phi"].to_numpy()
    log_in = _norm_logpdf(phi, t["mu_in"].to_numpy(), t["s_in"].to_numpy())
    log_out = _norm_logpdf(phi, t["mu_out"].to_numpy(), t["s_out"].to_numpy())
    return log_in > log_out, t["is_in"].to_numpy()


def _fit_logistic(x, y, l2=1.0):
    """Logistic regression on one feature with intercept; returns (w, b) on standardized x.

    Minimizes sum_i c_i * logloss_i + l2/2 * w^2 (intercept not penalized, like scikit-learn's
    default C=1), with class weights c making both classes weigh the same in total.
    """
    n1 = y.sum()
    c = np.where(y, len(y) / (2.0 * n1), len(y) / (2.0 * (len(y) - n1)))
    sign = np.where(y, 1.0, -1.0)

    def loss(theta):
        z = theta[0] * x + theta[1]
        p_wrong = 1.0 / (1.0 + np.exp(np.clip(sign * z, -500, 500)))  # sigmoid(-sign*z)
        value = np.sum(c * np.logaddexp(0.0, -sign * z)) + 0.5 * l2 * theta[0] ** 2
        grad_z = -c * sign * p_wrong
        return value, np.array([grad_z @ x + l2 * theta[0], grad_z.sum()])

    return minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B").x


def u_mia(scores):
    """Population U-MIA: balanced accuracy on targets of a logistic regression on phi.

    Fitted on all shadow rows in group forget (label 1) / holdout (label 0); phi is standardized
    with the shadow mean and std first. Returns None if a class is missing on either side.
    """
    pairs = mia_predictions(scores)
    return None if pairs is None else _balanced_accuracy(*pairs)


def mia_predictions(scores):
    """(predicted IN, truly IN) per target row of U-MIA, or None."""
    shadows, targets = _attack_rows(scores, "shadow"), _attack_rows(scores, "target")
    y = shadows["is_in"].to_numpy()
    if targets.empty or y.all() or not y.any():
        return None
    x = shadows["phi"].to_numpy(dtype=np.float64)
    mean, std = x.mean(), max(x.std(), MIN_SCALE)
    w, b = _fit_logistic((x - mean) / std, y)
    z = w * (targets["phi"].to_numpy(dtype=np.float64) - mean) / std + b
    return z > 0, targets["is_in"].to_numpy()


def accuracies(scores):
    """Identification accuracy (mean of `correct`) per group over target models' rows only."""
    t = scores[scores["role"] == "target"]
    out = {}
    for group in ("forget", "holdout", "retain"):
        c = t.loc[t["group"] == group, "correct"]
        out[f"{group}_acc"] = float(c.astype(bool).mean()) if len(c) else None
    return out


def score_mia(scores):
    """All five vision numbers: python floats in [0, 1] or None, never NaN."""
    result = {"u_lira": u_lira(scores), "u_mia": u_mia(scores), **accuracies(scores)}
    result = {k: result[k] for k in KEYS}
    return {k: None if v is None or not np.isfinite(v) else float(v) for k, v in result.items()}


def authors_phi(phi, eps=1e-6):
    """The CLEAR authors' score, log(s + 1e-45) - log(1 - s + 1e-45) with s = clip(cos, 0, 1),
    from ours: s = sigmoid(phi) is the cosine wherever phi_from_cosine did not clip it; at our
    floor (cos <= eps) s is taken as 0 and at our ceiling (cos >= 1 - eps) as 1, the authors'
    values for cos <= 0 and cos = 1 (0 < cos < 1e-6 would differ; it is a point mass at 0)."""
    phi = np.asarray(phi, dtype=np.float64)
    floor = float(phi_from_cosine(0.0, eps))
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-phi))
    s = np.where(phi <= floor + 1e-9, 0.0, np.where(phi >= -floor - 1e-9, 1.0, s))
    return np.log(s + AUTHORS_EPS) - np.log(1.0 - s + AUTHORS_EPS)


def in_convention(scores: pd.DataFrame, convention: str) -> pd.DataFrame:
    """The scores table with phi as `convention` computes it (clearbench: as stored)."""
    if convention == "clearbench":
        return scores
    return scores.assign(phi=authors_phi(scores["phi"]))


def _percentiles(values, n: int, level: float) -> tuple:
    if values is None:
        return None, None
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size * 2 <= n:
        return None, None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return float(lo), float(hi)


def _resampled_means(x, n: int, rng) -> np.ndarray | None:
    x = np.asarray(x, dtype=np.float64)
    return x[rng.integers(0, x.size, (n, x.size))].mean(1) if x.size else None


def intervals(scores, n: int, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals, <key>_lo and <key>_hi for each of KEYS: the target rows,
    i.e. (model, example) pairs, resampled within each class (IN = forget, OUT = holdout) and
    within each group for the accuracies. The attacks are fitted once on the shadows: the
    intervals are those of the evaluation on the targets, not of refitting the attack."""
    rng = np.random.default_rng(seed)
    draws = {}
    for key, pairs in (("u_lira", lira_predictions(scores)), ("u_mia", mia_predictions(scores))):
        draws[key] = None
        if pairs is not None:
            pred, truth = (np.asarray(x, bool) for x in pairs)
            hit_in = _resampled_means(pred[truth], n, rng)
            hit_out = _resampled_means(~pred[~truth], n, rng)
            if hit_in is not None and hit_out is not None:
                draws[key] = 0.5 * (hit_in + hit_out)
    targets = scores[scores["role"] == "target"]
    for group in ("forget", "holdout", "retain"):
        correct = targets.loc[targets["group"] == group, "correct"].astype(float)
        draws[f"{group}_acc"] = _resampled_means(correct, n, rng)
    out = {}
    for key in KEYS:
        out[f"{key}_lo"], out[f"{key}_hi"] = _percentiles(draws[key], n, level)
    return out


def write_parquet_atomic(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")  # NaN allowed, unlike io's


def main(argv=None):
    p = argparse.ArgumentParser(prog="clearbench mia", description=__doc__.splitlines()[0])
    p.add_argument("scores", help="scores.parquet (one row per model and image)")
    p.add_argument("--out", help="write the JSON here (atomically) instead of stdout")
    p.add_argument("--convention", choices=CONVENTIONS, default="clearbench",
                   help="phi as ours (cosine clipped at 1e-6) or as the CLEAR authors' code "
                   "(floor log 1e-45); default clearbench")  # fmt: skip
    add_bootstrap_arguments(p, "the targets' (model, example) pairs")
    args = p.parse_args(argv)
    try:
        df = in_convention(read_scores(args.scores, whole=True), args.convention)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = score_mia(df)
    if args.bootstrap:
        result |= intervals(df, args.bootstrap, args.bootstrap_seed, args.level)
    if args.out:
        write_json_atomic(args.out, result)
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
