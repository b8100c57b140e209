"""Unlink (training-free subspace removal): each property checked against a direct computation
on small seeded layers, CPU only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clearbench.unlink import (
    edit_weight,
    entangled_subspace,
    layer_inputs,
    lora_factors,
    resolve_layers,
    subspace,
    unlink,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------ linear


def test_linear_edit_kills_the_span_and_keeps_its_complement():
    g = gen()
    d, r = 16, 3
    mix = torch.randn(r, d, generator=g, dtype=torch.float64)  # rows span the features
    feats = torch.randn(40, r, generator=g, dtype=torch.float64) @ mix
    layer = nn.Linear(d, 8)
    w = layer.weight.detach().double()
    w_new = edit_weight(layer.weight, subspace(feats, k=r)).double()

    inside = feats.T @ torch.randn(40, 5, generator=g, dtype=torch.float64)  # (d, 5) in the span
    assert float((w_new @ inside).norm() / (w @ inside).norm()) < 1e-5

    basis, _ = torch.linalg.qr(mix.T)  # (d, r)
    outside = torch.randn(d, 5, generator=g, dtype=torch.float64)
    outside -= basis @ (basis.T @ outside)
    assert rel(w_new @ outside, w @ outside) < 1e-6
    assert (
        layer.weight.dtype == edit_weight(layer.weight, subspace(feats, k=r)).dtype == torch.float32
    )


def test_energy_picks_the_expected_k_and_k_is_capped_at_rank():
    g = gen(1)
    q1, _ = torch.linalg.qr(torch.randn(10, 4, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(30, 4, generator=g, dtype=torch.float64))
    s = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64).sqrt()  # energy shares .4 .3 .2 .1
    feats = q2 @ torch.diag(s) @ q1.T  # (30, 10), left singular vectors of X = feats.T are q1

    for energy, k in [(0.3, 1), (0.4, 1), (0.7, 2), (0.71, 3), (0.9, 3), (1.0, 4)]:
        u = subspace(feats, energy=energy)
        assert u.shape == (10, k), energy
        assert torch.allclose((u.T @ q1[:, :k]).abs(), torch.eye(k, dtype=torch.float64), atol=1e-9)
    assert subspace(feats, k=9).shape == (10, 4)


# ------------------------------------------------------------------ conv


CONVS = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=2),
    dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=2),
    dict(kernel_size=4, padding="same", padding_mode="reflect"),
]


@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_conv_edit_is_the_linear_edit_on_unfolded_patches(cfg):
    torch.manual_seed(0)
    g = gen(2)
    model = nn.Sequential(nn.Conv2d(3, 5, **cfg))
    conv = model[0]
    # forget input: one spatial map times a fixed channel vector, so its patches span <= kh*kw dims
    forget = torch.randn(1, 3, 1, 1, generator=g) * torch.randn(2, 1, 9, 9, generator=g)
    other = torch.randn(2, 3, 9, 9, generator=g)
    rows = layer_inputs(model, ["0"], lambda: model(forget))["0"]
    rank = int(torch.linalg.matrix_rank(rows))  # float32 rank: noise ~1e-7 is not a direction
    assert rank <= conv.kernel_size[0] * conv.kernel_size[1] < rows.shape[1]

    def as_matmul(
        weight, x
    ):  # weight (out, in*kh*kw) applied to x's patches, shaped as conv output
        r = layer_inputs(model, ["0"], lambda: model(x))["0"]
        out = conv(x)
        return (
            (r @ weight.reshape(5, -1).T)
            .reshape(out.shape[0], *out.shape[2:], 5)
            .permute(0, 3, 1, 2)
        )

    bias = conv.bias.detach()[:, None, None]
    with torch.no_grad():
        assert torch.allclose(as_matmul(conv.weight, other), conv(other) - bias, atol=1e-5)
        if cfg == CONVS[0]:  # our rows are exactly F.unfold's patches
            ref = F.unfold(other, 3, padding=1).transpose(1, 2).reshape(-1, 27)
            assert torch.equal(layer_inputs(model, ["0"], lambda: model(other))["0"], ref)
        before = conv(other) - bias
        conv.weight.copy_(edit_weight(conv.weight, subspace(rows, k=rank)))
        assert torch.allclose(as_matmul(conv.weight, other), conv(other) - bias, atol=1e-5)
        assert float((conv(forget) - bias).norm()) < 1e-5 * float(
            forget.norm() * conv.weight.norm()
        )
        assert rel(conv(other) - bias, before) > 0.05  # the edit did something, not everything
        assert float((conv(other) - bias).norm()) > 0.5 * float(before.norm())


def test_grouped_conv_is_refused():
    with pytest.raises(ValueError, match="groups"):
        resolve_layers(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), ["0"])


# ------------------------------------------------------------------ lora factors


def test_lora_factors_linear():
    g = gen(3)
    w = torch.randn(6, 10, generator=g)
    u, _ = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64))
    eta = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    for e in (None, eta):
        a, b = lora_factors(w, u, e)
        assert a.shape == (3, 10) and b.shape == (6, 3) and a.dtype == w.dtype
        assert torch.allclose(w + b @ a, edit_weight(w, u, e), atol=1e-6)
    assert not torch.allclose(edit_weight(w, u, eta), edit_weight(w, u), atol=1e-3)


def test_lora_factors_conv_compose_like_peft():
    g = gen(4)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=2)
    u, _ = torch.linalg.qr(torch.randn(27, 4, generator=g, dtype=torch.float64))
    eta = torch.tensor([1.0, 0.8, 0.3, 0.1], dtype=torch.float64)
    x = torch.randn(2, 3, 11, 11, generator=g)
    with torch.no_grad():
        a, b = lora_factors(conv.weight, u, eta)
        assert a.shape == (4, 3, 3, 3) and b.shape == (5, 4, 1, 1)
        adapted = conv(x) + F.conv2d(F.conv2d(x, a, stride=2, padding=2), b)
        edited = F.conv2d(x, edit_weight(conv.weight, u, eta), conv.bias, stride=2, padding=2)
        assert torch.allclose(adapted, edited, atol=1e-5)
        assert rel(edited, conv(x)) > 0.01


# ------------------------------------------------------------------ entangled


def entangled_data():
    """Forget in span(q0..q3), retain in span(q2..q9): two shared directions where retain is
    strong, plus a little isotropic noise."""
    g = gen(5)
    d = 12
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    forget = torch.randn(200, 4, generator=g, dtype=torch.float64) @ q[:, :4].T
    retain = 3 * torch.randn(400, 8, generator=g, dtype=torch.float64) @ q[:, 2:10].T
    forget += 0.01 * torch.randn(200, d, generator=g, dtype=torch.float64)
    retain += 0.01 * torch.randn(400, d, generator=g, dtype=torch.float64)
    return forget, retain


def test_entangled_eta_is_the_clipped_rayleigh_quotient_of_generalized_eigenvectors():
    forget, retain = entangled_data()
    ridge, d = 1e-3, forget.shape[1]
    u, eta = entangled_subspace(forget, retain, k=4, ridge=ridge)
    assert u.shape == (d, 4) and eta.shape == (4,)
    assert torch.allclose(u.norm(dim=0), torch.ones(4, dtype=torch.float64))
    assert bool((eta > 0).all() and (eta <= 1).all())
    assert float(eta.max()) == 1.0 and float(eta.min()) < 0.5  # both regimes of min(1, R) occur

    c_ff = forget.T @ forget / len(forget)
    c_rr = retain.T @ retain / len(retain)
    c_rr += ridge * c_rr.trace() / d * torch.eye(d, dtype=torch.float64)
    rq = torch.einsum("di,de,ei->i", u, c_ff, u) / torch.einsum("di,de,ei->i", u, c_rr, u)
    assert torch.allclose(eta, rq.clamp(max=1), rtol=1e-8)
    # generalized eigenvectors: C_ff u = R(u) C_rr u, C_rr-orthogonal, quotients descending
    assert torch.allclose(c_ff @ u, (c_rr @ u) * rq, atol=1e-8 * float(c_ff.norm()))
    gram = u.T @ c_rr @ u
    assert float((gram - torch.diag(gram.diag())).abs().max()) < 1e-8 * float(gram.diag().min())
    assert bool((rq[:-1] >= rq[1:]).all())
    assert float((u.T @ u - torch.eye(4, dtype=torch.float64)).abs().max()) > 1e-3  # not orthogonal

    assert entangled_subspace(forget, retain, energy=1.0)[0].shape[1] == d  # noise: full rank


def test_entangled_spares_retain_more_than_plain():
    forget, retain = entangled_data()
    w = torch.randn(6, forget.shape[1], generator=gen(6), dtype=torch.float64)

    def drop(w_new, x):  # share of output energy removed
        return 1 - float((x @ w_new.T).norm() ** 2 / (x @ w.T).norm() ** 2)

    w_ent = edit_weight(w, *entangled_subspace(forget, retain, k=4))
    w_plain = edit_weight(w, subspace(forget, k=4))
    f_ent, r_ent = drop(w_ent, forget), drop(w_ent, retain)
    f_plain, r_plain = drop(w_plain, forget), drop(w_plain, retain)
    assert f_ent > 0.5 and f_ent > r_ent + 0.3
    assert f_plain > 0.99
    assert r_plain > r_ent + 0.05


# ------------------------------------------------------------------ layers and unlink()


def mlp() -> nn.Sequential:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_unlink_end_to_end_sequential():
    model = mlp()
    g = gen(8)
    xf = torch.randn(30, 3, generator=g) @ torch.randn(3, 8, generator=g)  # rank-3 forget inputs
    xo = torch.randn(30, 8, generator=g)
    b0, b2 = model[0].bias.detach().clone(), model[2].bias.detach().clone()
    before = model(xo).detach()

    report = unlink(model, ["0", "2"], lambda: model(xf), k=3)
    assert list(report) == ["0", "2"]
    assert report["0"]["k"] == 3 and report["0"]["energy"] == pytest.approx(1.0)
    # layer 2 was collected after layer 0's edit: its forget inputs are all relu(b0), rank 1
    assert report["2"]["k"] == 1
    with torch.no_grad():
        assert float((model[0](xf) - b0).norm()) < 1e-5 * float(xf.norm())
        assert torch.allclose(model(xf), b2.expand(30, 4), atol=1e-5)
        assert torch.equal(model[0].bias, b0) and torch.equal(model[2].bias, b2)
        assert rel(model(xo), before) > 0.01


def test_unlink_entangled_reports_and_plain_energy():
    model = mlp()
    g = gen(9)
    xf, xr = torch.randn(20, 8, generator=g), torch.randn(40, 8, generator=g)
    report = unlink(
        model, ["0"], lambda: model(xf), lambda: model(xr), energy=0.5, variant="entangled"
    )
    assert 1 <= report["0"]["k"] < 8 and 0.5 <= report["0"]["energy"] <= 1

    model = mlp()
    rows = layer_inputs(model, ["0"], lambda: model(xf))["0"]
    s2 = torch.linalg.svdvals(rows.double()) ** 2
    report = unlink(model, ["0"], lambda: model(xf), k=2)
    assert report["0"]["energy"] == pytest.approx(float(s2[:2].sum() / s2.sum()))


def test_resolve_layers():
    model = mlp()
    assert resolve_layers(model, ["2", "0"]) == ["0", "2"]
    with pytest.raises(ValueError, match="'9'"):
        resolve_layers(model, ["0", "9"])
    with pytest.raises(ValueError, match="ReLU"):
        resolve_layers(model, ["1"])
    with pytest.raises(ValueError, match="ReLU"):
        resolve_layers(model, ["*"])


def test_layer_inputs_subsamples_reproducibly_and_removes_hooks():
    model = mlp()
    x = torch.randn(4, 25, 8, generator=gen(10))  # leading dims are flattened
    full = layer_inputs(model, ["0"], lambda: model(x))["0"]
    assert torch.equal(full, x.reshape(100, 8))
    a = layer_inputs(model, ["0", "2"], lambda: model(x), max_rows=10, seed=3)
    b = layer_inputs(model, ["0", "2"], lambda: model(x), max_rows=10, seed=3)
    assert a["0"].shape == (10, 8) and a["2"].shape == (10, 16)
    assert torch.equal(a["0"], b["0"])
    assert all(any(torch.equal(r, f) for f in full) for r in a["0"])
    assert not torch.equal(
        a["0"], layer_inputs(model, ["0"], lambda: model(x), max_rows=10, seed=4)["0"]
    )

    def boom():
        model(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        layer_inputs(model, ["0"], boom)
    assert not model[0]._forward_pre_hooks and not model[2]._forward_pre_hooks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variant="entangled", k=1), "retain_run"),
        (dict(k=0), "k must be"),
        (dict(energy=1.5), "energy must be"),
        (dict(energy=0.0), "energy must be"),
        (dict(k=1, energy=0.5), "exactly one"),
        (dict(), "exactly one"),
        (dict(variant="other", k=1), "variant"),
    ],
)
def test_unlink_argument_errors(kwargs, match):
    model = mlp()
    w = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=match):
        unlink(model, ["0"], lambda: model(torch.randn(3, 8)), **kwargs)
    assert torch.equal(model[0].weight, w)
