"""The fast path of LSTM and GRU LRP: one autograd node per layer and direction, not one per operation.

:mod:`medlrp.lrp.recurrent` unrolls an ``nn.LSTM`` under the engine, so every step is a dozen handled
operations (a Python handler and an autograd node each): exact, differentiable (``create_graph``), but
about 40 times a plain forward+backward on long signals. Here, for the fast path (no ``create_graph``)
and the epsilon rule, the same rules are folded into one node per layer and direction: the forward
pass runs the recurrence with plain tensor operations and computes the rules' coefficients for all
steps at once; the backward pass runs the LRP message back through time in gradient form
(``relevance = value * grad``):

* ``h_t = o * tanh(c_t)``: the gate takes nothing, ``tanh`` passes relevance on (ratio ``tanh(c)/c``);
* ``c_t = f * c_{t-1} + i * tanh(g)``: proportional split (``c / stab(c)``, stabiliser 1e-6), the gates
  ``f`` and ``i`` take nothing;
* ``g = W [x_t, h_{t-1}] + b``: epsilon (``g / stab(g)``, then ``W^T``).

Composed, the gradient reaching the sum ``c_t`` is ``s_t * carry_c + a_t * grad(h_t)`` with
``s = c / stab(c)`` and ``a = o * tanh(c) / stab(c)``; it leaves as ``f_t * .`` to ``c_{t-1}`` and as
``b_t * .`` (``b = i * tanh(g) / stab_eps(g)``) to the candidate's linear map. The coefficients are the
unrolled rules' own products, so both paths agree to rounding (``tests/test_lrp_recurrent.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from medlrp.lrp.handlers import NORM_STABILIZER
from medlrp.lrp.rules import stabilize

Tensor = torch.Tensor


class LSTMDirection(torch.autograd.Function):
    """One LSTM layer in one direction: true values forward, the LRP message backward.

    The outputs are the fused ``torch.lstm``'s own (a C++ loop); the gates follow from them for all
    steps at once (``z_t = W_ih x_t + W_hh h_{t-1} + b``), and only the cell states need a loop of one
    kernel per step. On a CPU the per-step cost is the Python call of each kernel, so the
    loops run as few as possible: one per step forward, four backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        weights: list[Tensor],
        eps: float,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` ``(T, N, F)``, states ``(N, H)``, ``weights`` ``[W_ih, W_hh(, b_ih, b_hh)]``.

        Returns the ``(T, N, H)`` outputs, ``h_T`` and ``c_T`` (in the direction's own order).
        """
        if reverse:
            x = x.flip(0)
        w_ih, w_hh = weights[0], weights[1]
        hidden = w_hh.shape[1]
        out, h_n, c_n = torch.lstm(
            x, (h0[None], c0[None]), weights, len(weights) > 2, 1, 0.0, False, False, False
        )
        steps, n, _ = x.shape
        h_prev = torch.cat([h0[None], out[:-1]]).reshape(steps * n, hidden)
        flat = x.reshape(steps * n, -1)
        z = _affine(flat, w_ih, weights[2] + weights[3] if len(weights) > 2 else None)
        z = z.addmm_(h_prev, w_hh.t()).view(steps, n, 4 * hidden)
        gates = z.sigmoid()
        i, f = gates[..., :hidden], gates[..., hidden : 2 * hidden].contiguous()
        g = z[..., 2 * hidden : 3 * hidden].contiguous()  # tanh on a strided view costs four times more
        tg = g.tanh()
        cs = torch.mul(i, tg)  # becomes the cell states, in place: c_t = f_t c_{t-1} + i_t tanh(g_t)
        c = c0
        for ct, ft in zip(cs.unbind(0), f.unbind(0), strict=True):
            c = ct.addcmul_(ft, c)
        # the rules' coefficients, for all steps at once
        stab = _stable(cs, NORM_STABILIZER)
        a = torch.div(out, stab)  # o tanh(c) / stab(c): the output is o tanh(c), no second tanh needed
        b = tg.mul_(i).div_(_stable(g, eps))
        sf = cs.div_(stab)  # s_t, then s_t f_{t+1}: what the sum at c_t passes to the sum at c_{t+1}
        sf[:-1].mul_(f[1:])
        ctx.save_for_backward(a, b, sf, f[0].clone(), w_ih, w_hh)
        ctx.reverse = reverse
        return (out.flip(0) if reverse else out), h_n[0], c_n[0]

    @staticmethod
    def backward(ctx: Any, g_out: Tensor | None, g_hn: Tensor | None, g_cn: Tensor | None) -> Any:  # type: ignore[override]
        """The LRP message back through time (see the module docstring)."""
        a, b, sf, f0, w_ih, w_hh = ctx.saved_tensors
        steps, n, hidden = a.shape
        w_ig, w_hg = w_ih[2 * hidden : 3 * hidden], w_hh[2 * hidden : 3 * hidden]
        # the output's gradient reaches the sum at c_t through a_t: folded in for all steps at once
        base = torch.zeros_like(a) if g_out is None else a * (g_out.flip(0) if ctx.reverse else g_out)
        carry_h = g_hn if g_hn is not None else a.new_zeros(n, hidden)
        gsum = g_cn if g_cn is not None else a.new_zeros(n, hidden)
        views = list(zip(base.unbind(0), a.unbind(0), sf.unbind(0), b.unbind(0), strict=True))
        for base_t, a_t, sf_t, b_t in reversed(views):
            # gsum_t = base_t + a_t carry_h + s_t f_{t+1} gsum_{t+1}  (the last step: s_T grad(c_T));
            # written into base_t, which so ends up holding every step's gsum
            gsum = base_t.addcmul_(a_t, carry_h).addcmul_(sf_t, gsum)
            carry_h = torch.mm(b_t * gsum, w_hg)
        g_c0 = f0 * gsum  # before base (which gsum is a view of) changes
        q = base.mul_(b)  # what reaches the candidate's linear map, all steps at once
        g_x = (q.view(steps * n, hidden) @ w_ig).view(steps, n, -1)
        if ctx.reverse:
            g_x = g_x.flip(0)
        return g_x, carry_h, g_c0, None, None, None


class GRUDirection(torch.autograd.Function):
    """One GRU layer in one direction: true values forward, the LRP message backward.

    ``h_t = (1 - z) n + z h_{t-1}`` (proportional split, ``1 - z`` and ``z`` gates),
    ``n = tanh(s)``, ``s = W_in x + b_in + r (W_hn h + b_hn)`` (tanh passes relevance on, the sum splits
    proportionally, ``r`` a gate), the two linear maps with epsilon. The gradient reaching the sum at
    ``h_t`` is ``u_t = A_t grad(h_t)`` (``A = h / stab(h)``); it leaves as ``z_t u_t`` to ``h_{t-1}``
    directly and as ``u_t B_t C_t`` through ``W_hn`` (``B = (1 - z) n / stab(s)``,
    ``C = r hn / stab_eps(hn)``), and as ``u_t B_t xn / stab_eps(xn)`` through ``W_in`` to the input.
    The outputs come from the fused ``torch.gru``; every coefficient is computed for all steps at
    once (no loop forward); the backward pass needs four kernels per step.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, h0: Tensor, weights: list[Tensor], eps: float, reverse: bool
    ) -> tuple[Tensor, Tensor]:
        """``x`` ``(T, N, F)``, ``h0`` ``(N, H)``: returns the ``(T, N, H)`` outputs and ``h_T``."""
        if reverse:
            x = x.flip(0)
        w_ih, w_hh = weights[0], weights[1]
        hidden = w_hh.shape[1]
        out, h_n = torch.gru(x, h0[None], weights, len(weights) > 2, 1, 0.0, False, False, False)
        steps, n, _ = x.shape
        h_prev = torch.cat([h0[None], out[:-1]]).reshape(steps * n, hidden)
        flat = x.reshape(steps * n, -1)
        gx = _affine(flat, w_ih, weights[2] if len(weights) > 2 else None).view(steps, n, -1)
        gh = _affine(h_prev, w_hh, weights[3] if len(weights) > 2 else None).view(steps, n, -1)
        rz = (gx[..., : 2 * hidden] + gh[..., : 2 * hidden]).sigmoid_()
        r, z = rz[..., :hidden], rz[..., hidden:]
        xn, hn = gx[..., 2 * hidden :], gh[..., 2 * hidden :]
        rhn = r * hn
        s = xn + rhn
        b = (1 - z).mul_(s.tanh()).div_(_stable(s, NORM_STABILIZER))  # (1 - z) n / stab(s)
        a = torch.div(out, _stable(out, NORM_STABILIZER))
        bc = rhn.div_(_stable(hn, eps)).mul_(b)  # B r hn / stab_eps(hn)
        bx = b.mul_(xn).div_(_stable(xn, eps))  # B xn / stab_eps(xn)
        ctx.save_for_backward(a, z.contiguous(), bc, bx, w_ih, w_hh)
        ctx.reverse = reverse
        return (out.flip(0) if reverse else out), h_n[0]

    @staticmethod
    def backward(ctx: Any, g_out: Tensor | None, g_hn: Tensor | None) -> Any:  # type: ignore[override]
        """The LRP message back through time (see the class docstring)."""
        a, z, bc, bx, w_ih, w_hh = ctx.saved_tensors
        steps, n, hidden = a.shape
        w_in, w_hn = w_ih[2 * hidden :], w_hh[2 * hidden :]
        base = torch.zeros_like(a) if g_out is None else a * (g_out.flip(0) if ctx.reverse else g_out)
        carry = g_hn if g_hn is not None else a.new_zeros(n, hidden)
        views = list(zip(base.unbind(0), a.unbind(0), z.unbind(0), bc.unbind(0), strict=True))
        for base_t, a_t, z_t, bc_t in reversed(views):
            u = base_t.addcmul_(a_t, carry)  # written into base_t: base ends up holding every u_t
            carry = torch.addmm(z_t * u, bc_t * u, w_hn)
        g_x = (base.mul_(bx).view(steps * n, hidden) @ w_in).view(steps, n, -1)
        if ctx.reverse:
            g_x = g_x.flip(0)
        return g_x, carry, None, None, None


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x W^T + b`` for ``x`` ``(rows, in)``."""
    return torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()


def _stable(z: Tensor, eps: float) -> Tensor:
    """``stab(z)`` for the epsilon rule; for LRP-0 (``eps == 0``) a ``z`` whose zeros divide to 0."""
    if eps == 0:
        return torch.where(z == 0, torch.inf, z)
    return stabilize(z, eps)
