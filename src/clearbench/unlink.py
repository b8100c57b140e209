"""Unlink: training-free unlearning by removing the forget subspace from a layer's weights.

A layer W sees the forget samples through its inputs X (d x n). If those inputs live near a
low-dimensional subspace U_f (top-k left singular vectors of X), then W* = W - W U_f U_f^T
maps them to (almost) zero while leaving inputs orthogonal to U_f untouched (paper eq 10).
Attention q/k/v are plain Linear layers sharing an input, so they need nothing special; a
Conv2d is a Linear on its unfolded input patches (appendix H). When forget and retain inputs
overlap, the entangled variant (eqs 12-15) picks directions by a generalized Rayleigh quotient
and removes each only as far as it carries more forget than retain energy.

Everything is computed in float64; weights are written back in the layer's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("plain", "entangled")


def _check(k: int | None, energy: float | None) -> None:
    if (k is None) == (energy is None):
        raise ValueError("give exactly one of k and energy")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")


def _choose(values: torch.Tensor, rank: int, k: int | None, energy: float | None) -> int:
    """How many leading directions of a descending spectrum to take, never more than its rank
    (beyond it the directions are noise, and removing them only damages the layer)."""
    if energy is not None:
        share = values.clamp(min=0).cumsum(0) / values.clamp(min=0).sum().clamp(min=1e-300)
        k = int((share < energy - 1e-12).sum()) + 1
    return min(k, rank)


def _rank(s: torch.Tensor, shape: tuple, dtype: torch.dtype) -> int:
    """Numerical rank at the precision the features were computed in: float32 activations of
    an exactly rank-r input still carry rounding noise ~1e-7 in every other direction."""
    eps = torch.finfo(dtype if dtype.is_floating_point else torch.float64).eps
    return int((s > s[0] * max(shape) * eps).sum()) if len(s) and s[0] > 0 else 0


def _subspace(features, k, energy):
    _check(k, energy)
    x = features.double().reshape(-1, features.shape[-1])
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # right sv of features = left sv of X
    n = _choose(s**2, _rank(s, x.shape, features.dtype), k, energy)
    share = float((s[:n] ** 2).sum() / (s**2).sum()) if n else 0.0
    return vh[:n].T, share


def subspace(
    features: torch.Tensor, k: int | None = None, energy: float | None = None
) -> torch.Tensor:
    """features (n, d), rows = samples/tokens/patches -> U (d, k) float64: the top-k left
    singular vectors of X = features.T. Exactly one of k / energy; energy in (0, 1] takes the
    smallest k whose squared singular values hold that share. k is capped at the rank."""
    return _subspace(features, k, energy)[0]


def _entangled(forget, retain, k, energy, ridge):
    _check(k, energy)
    f, r = forget.double(), retain.double().to(forget.device)
    d = f.shape[1]
    c_ff, c_rr = f.T @ f / len(f), r.T @ r / len(r)
    scale = float(c_rr.trace()) / d or 1.0  # ridge relative to the retain energy per dimension
    c_rr = c_rr + ridge * scale * torch.eye(d, dtype=c_rr.dtype, device=c_rr.device)
    L, info = torch.linalg.cholesky_ex(c_rr)
    if info:
        raise ValueError("retain covariance is not positive definite; use ridge > 0")
    half = torch.linalg.solve_triangular(L, c_ff, upper=False)  # L^-1 C_ff
    a = torch.linalg.solve_triangular(L, half.T, upper=False)  # L^-1 C_ff L^-T (eq 13)
    lam, q = torch.linalg.eigh((a + a.T) / 2)
    lam, q = lam.flip(0), q.flip(1)  # descending
    rank = _rank(torch.linalg.svdvals(f), f.shape, forget.dtype)  # rank A = rank X_f
    n = _choose(lam, rank, k, energy)
    # eq 14; u_i^T C_rr u_i = 1, so R(u_i) = lam_i
    u = torch.linalg.solve_triangular(L.T, q[:, :n], upper=True)
    u = u / u.norm(dim=0)
    share = float(lam[:n].sum() / lam.clamp(min=0).sum()) if n else 0.0
    return u, lam[:n].clamp(max=1), share


def entangled_subspace(
    forget: torch.Tensor,
    retain: torch.Tensor,
    k: int | None = None,
    energy: float | None = None,
    ridge: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """forget (n_f, d), retain (n_r, d) -> (U (d, k) unit columns, eta (k,)), float64 (eqs 12-15).

    U are the top generalized eigenvectors of (C_ff, C_rr), C_rr ridged by ridge * trace / d so
    its Cholesky exists; eta_i = min(1, R(u_i)) with R the Rayleigh quotient u^T C_ff u / u^T C_rr u,
    which equals the eigenvalue. The u_i are C_rr-orthogonal, not orthogonal. We normalise each
    to unit length before eq 15 (R is scale free, so eta is unchanged): this is our reading of
    eq 15, which the paper does not spell out. energy applies to the eigenvalues."""
    u, eta, _ = _entangled(forget, retain, k, energy, ridge)
    return u, eta


def edit_weight(
    weight: torch.Tensor, U: torch.Tensor, eta: torch.Tensor | None = None
) -> torch.Tensor:
    """W - W U diag(eta) U^T (eta None: plain projection). A conv weight (out, in, kh, kw) is
    flattened to (out, in*kh*kw), the layout of its unfolded input patches, and reshaped back."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    u = U.double().to(w.device)
    if u.shape[0] != w.shape[1]:
        raise ValueError(
            f"U has {u.shape[0]} rows but the weight takes inputs of size {w.shape[1]}"
        )
    wu = w @ u if eta is None else (w @ u) * eta.double().to(w.device)
    return (w - wu @ u.T).reshape(weight.shape).to(weight.dtype)


def lora_factors(
    weight: torch.Tensor, U: torch.Tensor, eta: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with weight + B @ A == edit_weight(weight, U, eta): A = (U diag(eta))^T (k, d_in),
    B = -W U (out, k), so the edit can ship as a rank-k adapter. For a conv weight A is
    (k, in, kh, kw) and B (out, k, 1, 1), peft's Conv2d LoRA layout (lora_A a conv with the
    layer's kernel, lora_B a 1x1 conv)."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    u = U.double().to(w.device)
    a = (u if eta is None else u * eta.double().to(w.device)).T
    b = -(w @ u)
    if weight.dim() == 4:
        a, b = a.reshape(-1, *weight.shape[1:]), b[:, :, None, None]
    return a.to(weight.dtype), b.to(weight.dtype)


def _supported(name: str, module: nn.Module) -> None:
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise ValueError(f"{name!r} is a {type(module).__name__}, not nn.Linear or nn.Conv2d")
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ValueError(f"{name!r} is a grouped Conv2d (groups={module.groups}); only groups=1")


def resolve_layers(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the modules matching any fnmatch pattern, in model.named_modules() order (the
    root, named '', is never matched). Each pattern must match something, and only Linear or
    Conv2d: a pattern silently catching a LayerNorm would edit the wrong thing."""
    modules = [(n, m) for n, m in model.named_modules() if n]
    for p in patterns:
        hits = [(n, m) for n, m in modules if fnmatchcase(n, p)]
        if not hits:
            raise ValueError(f"layer pattern {p!r} matches no module")
        for n, m in hits:
            _supported(n, m)
    return [n for n, _ in modules if any(fnmatchcase(n, p) for p in patterns)]


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows its weight multiplies: tokens for Linear, patches for Conv2d."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    # pad as the conv itself does (handles padding='same' and non-zero padding modes)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    p = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
    return p.transpose(1, 2).reshape(-1, p.shape[1])


def _collector(chunks: list[torch.Tensor]):
    def hook(module, args):
        chunks.append(_rows(module, args[0].detach()))

    return hook


def layer_inputs(
    model: nn.Module,
    names: list[str],
    run: Callable[[], object],
    max_rows: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Input rows (n, d) of the named layers while run() runs the model: Linear inputs with all
    leading dims flattened, Conv2d inputs as unfolded patches. Rows are subsampled to max_rows
    with a seeded generator so that the SVD stays cheap and the result reproducible."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    try:
        for n in names:
            if n not in modules:
                raise ValueError(f"no module named {n!r}")
            _supported(n, modules[n])
            hooks.append(modules[n].register_forward_pre_hook(_collector(seen[n])))
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, chunks in seen.items():
        if not chunks:
            raise ValueError(f"layer {n!r} did not run")
        rows = torch.cat(chunks)
        if max_rows is not None and len(rows) > max_rows:
            g = torch.Generator().manual_seed(seed)
            rows = rows[
                torch.randperm(len(rows), generator=g)[:max_rows].sort().values.to(rows.device)
            ]
        out[n] = rows
    return out


def unlink(
    model: nn.Module,
    layers: list[str],
    forget_run: Callable[[], object],
    retain_run: Callable[[], object] | None = None,
    *,
    k: int | None = None,
    energy: float | None = None,
    variant: str = "plain",
    ridge: float = 1e-3,
    max_rows: int | None = 4096,
    seed: int = 0,
) -> dict[str, dict]:
    """Edit `model` in place (Algorithm 1), biases untouched. Layers are edited one at a time in
    model order, each from its inputs under the model as edited so far: an earlier edit changes
    what later layers see. Returns per layer {"k", "energy"}: the share of forget-feature energy
    the removed subspace held (plain) or the eigenvalue share (entangled)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "entangled" and retain_run is None:
        raise ValueError("variant 'entangled' needs retain_run")
    _check(k, energy)
    modules = dict(model.named_modules())
    report = {}
    with torch.no_grad():
        for name in resolve_layers(model, layers):
            forget = layer_inputs(model, [name], forget_run, max_rows, seed)[name]
            if variant == "plain":
                u, share = _subspace(forget, k, energy)
                eta = None
            else:
                retain = layer_inputs(model, [name], retain_run, max_rows, seed)[name]
                u, eta, share = _entangled(forget, retain, k, energy, ridge)
            w = modules[name].weight
            w.copy_(edit_weight(w, u, eta))
            report[name] = {"k": u.shape[1], "energy": share}
    return report
