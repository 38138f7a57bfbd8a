"""Each transformer rule equals the paper's equation, written with einsum (float64, seeded).

The rules are run as the engine runs them: the operation under the composite's handlers, its inputs
tracked, so a test of a rule tests the rule the engine uses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from medlrp.lrp import attention as A
from medlrp.lrp.composites import Composite
from medlrp.lrp.engine import Engine
from medlrp.lrp.handlers import HANDLERS
from medlrp.lrp.transformer import attnlrp, cp_lrp


def relevance(
    op: Callable[..., torch.Tensor],
    inputs: list[torch.Tensor],
    r_out: torch.Tensor,
    composite: Composite | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``op(*inputs)`` under the composite's handlers (fast path): its value and each input's ``x * grad``.

    The gradient at the output is ``r_out / output``, so that the output's relevance is ``r_out``.
    """
    composite = composite or attnlrp()
    model = torch.nn.Module()
    engine = Engine(model, {**HANDLERS, **composite.handlers}, composite.selector(model), False, {})
    leaves = [t.clone().requires_grad_() for t in inputs]
    try:
        for leaf in leaves:
            engine.track(leaf)
        with engine:
            out = op(*leaves)
        grads = torch.autograd.grad(out, leaves, r_out / out.detach())
    finally:
        engine.release()
    return out.detach(), [x * g for x, g in zip(inputs, grads, strict=True)]


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    err = (a - b).norm() / b.norm()
    assert err < tol, f"relative error {err:.2e}"


# --- paper equations (explicit relevance messages; LRP-0 limit of epsilon where nothing is named) ---


def ref_softmax(x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """AttnLRP softmax rule: R_i = x_i (R_i - s_i sum_j R_j)."""
    s = x.softmax(-1)
    return x * (r_out - s * r_out.sum(-1, keepdim=True))


def ref_matmul(a: torch.Tensor, b: torch.Tensor, r_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform rule on O = A B: each product term A_ik B_kj gets its share of R_ij, split 50/50."""
    o = torch.einsum("...ik,...kj->...ij", a, b)
    terms = torch.einsum("...ik,...kj->...ikj", a, b) * (r_out / o)[..., :, None, :]
    return 0.5 * terms.sum(-1), 0.5 * terms.sum(-3)


def ref_linear(x: torch.Tensor, w: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """LRP-0 on z = x W^T (no bias): R_i = sum_j x_i w_ji R_j / z_j."""
    z = torch.einsum("...i,ji->...j", x, w)
    return torch.einsum("...i,ji,...j->...i", x, w, r_out / z)


def ref_layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """Identity rule on the centring z = (I - 11^T/N) x with the std constant, LRP-0 on y = z w / std + b."""
    n = x.shape[-1]
    std = (x.var(-1, keepdim=True, correction=0) + 1e-5).sqrt()
    centre = torch.eye(n, dtype=x.dtype) - 1.0 / n
    z = torch.einsum("...i,ij->...j", x, centre)
    y = z * w / std + b
    r_z = (z * w / std) * r_out / y
    return torch.einsum("...i,ij,...j->...i", x, centre, r_z / z)


def test_softmax_rule_is_the_gradient() -> None:
    x = _rand(2, 3, 5)
    r_out = _rand(2, 3, 5, seed=1)
    xg = x.clone().requires_grad_()
    s = xg.softmax(-1)
    (g,) = torch.autograd.grad(s, xg, r_out / s.detach())
    _close(x * g, ref_softmax(x, r_out))


def test_matmul_uniform_rule() -> None:
    a, b = _rand(2, 4, 3), _rand(2, 3, 5, seed=1)
    r_out = _rand(2, 4, 5, seed=2)
    for op in (torch.matmul, torch.bmm, lambda p, q: p @ q):
        _, (got_a, got_b) = relevance(op, [a, b], r_out)
        ra, rb = ref_matmul(a, b, r_out)
        _close(got_a, ra)
        _close(got_b, rb)
        # conservative: the two halves add up to the output relevance
        torch.testing.assert_close(got_a.sum() + got_b.sum(), r_out.sum())


def test_einsum_and_elementwise_product_uniform_rule() -> None:
    a, b = _rand(3, 4), _rand(4, 2, seed=1)
    r_out = _rand(3, 2, seed=2)
    _, (got_a, got_b) = relevance(lambda p, q: torch.einsum("ik,kj->ij", p, q), [a, b], r_out)
    ra, rb = ref_matmul(a, b, r_out)
    _close(got_a, ra)
    _close(got_b, rb)
    # elementwise product u * v of two relevance-carrying tensors: each factor gets half of R
    u, v = _rand(6), _rand(6, seed=3)
    r = _rand(6, seed=4)
    _, (got_u, got_v) = relevance(torch.mul, [u, v], r)
    _close(got_u, r / 2)
    _close(got_v, r / 2)


def test_layer_norm_rule() -> None:
    x = _rand(2, 3, 6)
    w, b = _rand(6, seed=1), _rand(6, seed=2)
    r_out = _rand(2, 3, 6, seed=3)
    xg = x.clone().requires_grad_()
    y = A.layer_norm_rule(xg, (6,), w, b, 1e-5)
    torch.testing.assert_close(y, F.layer_norm(x, (6,), w, b, 1e-5))
    (g,) = torch.autograd.grad(y, xg, r_out / y.detach())
    _close(x * g, ref_layer_norm(x, w, b, r_out))


def test_identity_rule_for_activations() -> None:
    x = _rand(4, 7)
    r_out = _rand(4, 7, seed=1)
    for fn in (F.gelu, F.silu, torch.tanh):
        for composite in (attnlrp(), attnlrp(residual="plain")):
            y, (got,) = relevance(fn, [x], r_out, composite)
            torch.testing.assert_close(y, fn(x))
            _close(got, r_out)


def _attention_reference(x, wq, wk, wv, wo, r_out):  # type: ignore[no-untyped-def]
    """One head of attention with every message written out (AttnLRP; LRP-0 on the projections)."""
    q, k, v = (torch.einsum("ti,ji->tj", x, w) for w in (wq, wk, wv))
    s = torch.einsum("te,ue->tu", q, k) * 0.5
    a = s.softmax(-1)
    o = torch.einsum("tu,ud->td", a, v)
    r_o = ref_linear(o, wo, r_out)
    r_a, r_v = ref_matmul(a, v, r_o)
    r_s = ref_softmax(s, r_a)
    r_q, r_kt = ref_matmul(q, k.T * 0.5, r_s)
    return ref_linear(x, wq, r_q) + ref_linear(x, wk, r_kt.T) + ref_linear(x, wv, r_v)


def test_attention_head_explicit_and_fused_match_the_equations() -> None:
    t, d = 5, 4
    x = _rand(t, d)
    wq, wk, wv, wo = (_rand(d, d, seed=s) for s in (1, 2, 3, 4))
    r_out = _rand(t, d, seed=5)
    ref = _attention_reference(x, wq, wk, wv, wo, r_out)

    def explicit(xg: torch.Tensor) -> torch.Tensor:
        q, k, v = xg @ wq.T, xg @ wk.T, xg @ wv.T
        s = torch.matmul(q, k.transpose(0, 1)) * 0.5
        o = torch.matmul(s.softmax(-1), v)
        return o @ wo.T

    def fused(xg: torch.Tensor) -> torch.Tensor:
        q, k, v = (xg @ w.T for w in (wq, wk, wv))
        o = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=0.5)[0]
        return o @ wo.T

    for fn in (explicit, fused):
        _, (got,) = relevance(fn, [x], r_out)
        _close(got, ref)


def test_cp_lrp_attention_holds_weights_constant() -> None:
    t, d = 5, 4
    x = _rand(t, d)
    wq, wk, wv = (_rand(d, d, seed=s) for s in (1, 2, 3))
    r_out = _rand(t, d, seed=5)
    a = ((x @ wq.T) @ (x @ wk.T).T * 0.5).softmax(-1)
    v = x @ wv.T
    o = a @ v
    # CP-LRP: R_v = sum_t a_tu v_ud R_td / o_td (A constant), then LRP-0 onto x through W_v only
    r_v = torch.einsum("tu,ud,td->ud", a, v, r_out / o)
    ref = ref_linear(x, wv, r_v)

    def attention(xg: torch.Tensor) -> torch.Tensor:
        q, k, vv = (xg @ w.T for w in (wq, wk, wv))
        return F.scaled_dot_product_attention(q[None], k[None], vv[None], scale=0.5)[0]

    _, (got,) = relevance(attention, [x], r_out, cp_lrp())
    _close(got, ref)
    torch.testing.assert_close(got.sum(), r_out.sum())


def test_linearised_matches_fast_rule_and_is_differentiable() -> None:
    # the exact-pass form of the layer-norm rule equals the fast one, and its vjp carries the graph
    x = _rand(3, 6)
    w = _rand(6, seed=1).requires_grad_()
    g = _rand(3, 6, seed=2)
    x1 = x.clone().requires_grad_()
    rstd = A.layer_norm_rstd(x1, (6,), 1e-5)
    y1 = F.layer_norm(x1, (6,), w, None, 1e-5)
    x2 = x.clone().requires_grad_()
    y2 = A.linearised(y1, lambda gr: [A.vjp_layer_norm(gr, rstd, w, (6,))], [x2])
    (gx,) = torch.autograd.grad(y2, x2, g, create_graph=True)
    x3 = x.clone().requires_grad_()
    (gfast,) = torch.autograd.grad(A.layer_norm_rule(x3, (6,), w.detach(), None, 1e-5), x3, g)
    torch.testing.assert_close(gx.detach(), gfast)
    assert gx.requires_grad  # second order flows to w and (through rstd) to x1
    (gw,) = torch.autograd.grad((gx * x).sum(), w)
    assert gw.abs().sum() > 0


def test_rms_norm_rule_passes_relevance_unchanged() -> None:
    # y = x * rstd * w with rstd held constant is elementwise-linear: R_x = R_y
    x = _rand(3, 6)
    w = _rand(6, seed=1)
    r_out = _rand(3, 6, seed=2)
    xg = x.clone().requires_grad_()
    y = A.rms_norm_rule(xg, (6,), w, 1e-6)
    torch.testing.assert_close(y, F.rms_norm(x, (6,), w, 1e-6))
    (g,) = torch.autograd.grad(y, xg, r_out / y.detach())
    _close(x * g, r_out)
