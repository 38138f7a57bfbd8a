"""LRP for recurrent layers: ``nn.LSTM`` and ``nn.GRU`` (Arras et al. 2017, 2019).

torch runs a whole recurrent layer as one fused operation (``torch.lstm`` / ``torch.gru``), which
no rule can see into. The handlers here unroll the layer step by step from the module's own weights
(the flat weight list the module passes to the fused op) *with the engine active*, so every step is
made of operations the engine already has rules for:

* the linear maps take the composite's dense rule (epsilon); an LSTM step's pre-activations
  ``W_ih x_t + W_hh h_{t-1} + b`` are one linear map of ``[x_t, h_{t-1}]`` (the paper's form: the
  epsilon rule shares relevance between the input and the previous state in one denominator);
* the gates (sigmoid outputs) pass no relevance: a product ``gate * signal`` gives all of its
  relevance to the signal ("signal-take-all");
* sums (the cell state ``c_t = f * c_{t-1} + i * g``, the GRU's ``h_t = (1 - z) * n + z * h_{t-1}``
  and its candidate ``W_in x + b_in + r * (W_hn h + b_hn)``) split relevance in proportion to the
  summands; ``tanh`` passes relevance unchanged (identity rule).

A cell written by hand from ``sigmoid``/``tanh``/``*``/``+`` gets the same rules through the graph.

What is conserved: with zero biases and zero initial states, the relevance of the inputs sums to
the relevance reaching the layer's outputs (up to the stabilisers). Otherwise biases absorb their
share at each linear map and the initial states absorb what flows back to them (``f * c_0``,
``W_hh h_0``); the gates absorb nothing (they receive none).

Packed sequences (``nn.utils.rnn.PackedSequence``) are refused with
:class:`~medlrp.errors.UnsupportedLayerError`: pad the batch instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medlrp.lrp.engine import Engine, Handler
from medlrp.lrp.handlers import register_handler
from medlrp.lrp.recurrent_fast import GRUDirection, LSTMDirection
from medlrp.lrp.rules import Epsilon, Zero

Tensor = torch.Tensor

State = tuple[Tensor, ...]
Joint = tuple[Tensor, Tensor | None]
#: One step of a cell: ``step(x_t, state, weights, joint) -> (h_t, state)``.
Step = Callable[[Tensor, State, "Weights", Any], tuple[Tensor, State]]


@dataclass
class Weights:
    """The weights of one layer and direction, from the module's flat weight list."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None = None  # LSTM projection (``proj_size > 0``)

    def joint(self) -> tuple[Tensor, Tensor | None]:
        """``[W_ih, W_hh]`` and ``b_ih + b_hh``: the LSTM pre-activation as one linear map."""
        weight = torch.cat([self.w_ih, self.w_hh], dim=1)
        if self.b_ih is None or self.b_hh is None:
            return weight, None
        return weight, self.b_ih + self.b_hh


@dataclass
class Call:
    """The arguments of one fused recurrent call, bound by name."""

    input: Tensor
    hx: tuple[Tensor, ...]
    weights: Sequence[Tensor]
    has_biases: bool
    num_layers: int
    dropout: float
    train: bool
    bidirectional: bool
    batch_first: bool

    def layer_weights(self, layer: int, direction: int) -> Weights:
        """The weights of ``layer`` in ``direction`` (0 forward, 1 backward)."""
        directions = 2 if self.bidirectional else 1
        per = len(self.weights) // (self.num_layers * directions)
        start = (layer * directions + direction) * per
        w = list(self.weights[start : start + per])
        w_ih, w_hh = w[0], w[1]
        b_ih, b_hh = (w[2], w[3]) if self.has_biases else (None, None)
        extra = 4 if self.has_biases else 2
        return Weights(w_ih, w_hh, b_ih, b_hh, w[extra] if len(w) > extra else None)


def _packed(engine: Engine, what: str) -> Exception:
    return engine.unsupported(
        f"{what} a packed sequence (nn.utils.rnn.PackedSequence) has no relevance rule; pad the batch to "
        "one length instead"
    )


@register_handler(torch._pack_padded_sequence)
def _refuse_packing(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise _packed(engine, "packing a relevance-carrying tensor into")


def _bind(engine: Engine, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    if kwargs:
        args = args + tuple(kwargs.values())
    if len(args) > 3 and isinstance(args[3], (list, tuple)):
        raise _packed(engine, f"{kind} on")
    x, hx, weights, has_biases, layers, dropout, train, bidirectional, batch_first = args
    hx = tuple(hx) if isinstance(hx, (list, tuple)) else (hx,)
    return Call(x, hx, weights, has_biases, layers, dropout, train, bidirectional, batch_first)


def _lstm_step(x_t: Tensor, state: State, w: Weights, joint: Joint) -> tuple[Tensor, State]:
    h, c = state
    z = F.linear(torch.cat([x_t, h], dim=1), joint[0], joint[1])
    i, f, g, o = z.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if w.w_hr is not None:
        h = F.linear(h, w.w_hr)
    return h, (h, c)


def _gru_step(x_t: Tensor, state: State, w: Weights, joint: None) -> tuple[Tensor, State]:
    (h,) = state
    gx = F.linear(x_t, w.w_ih, w.b_ih)
    gh = F.linear(h, w.w_hh, w.b_hh)
    xr, xz, xn = gx.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h = (1 - z) * n + z * h
    return h, (h,)


#: ``direction(x, weights, initial states, reverse) -> (outputs (T, N, H), final states)``.
Direction = Callable[[Tensor, "Weights", State, bool], tuple[Tensor, State]]


def _layers(engine: Engine, kind: str, call: Call, direction: Direction) -> tuple[Tensor, list[Tensor]]:
    """Every layer and direction; returns the output sequence (``input``'s layout) and the final states."""
    directions = 2 if call.bidirectional else 1
    x = call.input.transpose(0, 1) if call.batch_first else call.input
    finals: list[list[Tensor]] = [[] for _ in call.hx]
    for layer in range(call.num_layers):
        if layer > 0 and call.train and call.dropout > 0:
            raise engine.input_error(f"{kind} dropout is active (model in train mode): call model.eval()")
        outputs = []
        for d in range(directions):
            index = layer * directions + d
            out, states = direction(x, call.layer_weights(layer, d), tuple(h[index] for h in call.hx), d == 1)
            outputs.append(out)
            for final, s in zip(finals, states, strict=True):
                final.append(s)
        x = torch.cat(outputs, dim=2) if directions == 2 else outputs[0]
    return (x.transpose(0, 1) if call.batch_first else x), [torch.stack(f) for f in finals]


def _unrolled(engine: Engine, step: Step, joint: bool) -> Direction:
    """One direction unrolled step by step under the engine (every operation gets its rule)."""

    def direction(x: Tensor, w: Weights, states: State, reverse: bool) -> tuple[Tensor, State]:
        extra = w.joint() if joint else None
        state = tuple(_state(engine, h) for h in states)
        ys: list[Tensor] = [x] * x.shape[0]
        for t in range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0]):
            ys[t], state = step(x[t], state, w, extra)
        return torch.stack(ys), state

    return direction


def _fused(kind: str, eps: float) -> Direction:
    """One direction as one autograd node (:mod:`medlrp.lrp.recurrent_fast`)."""
    function = LSTMDirection if kind == "lstm" else GRUDirection

    def direction(x: Tensor, w: Weights, states: State, reverse: bool) -> tuple[Tensor, State]:
        weights = [t.detach() for t in (w.w_ih, w.w_hh, w.b_ih, w.b_hh) if t is not None]
        out, *finals = function.apply(x, *states, weights, eps, reverse)
        return out, tuple(finals)

    return direction


def _state(engine: Engine, h0: Tensor) -> Tensor:
    """An initial state; one that carries no relevance is tracked as a sink (it absorbs its share)."""
    if engine.node(h0) is not None:
        return h0
    h0 = h0.clone()
    engine.track(h0, h0)
    return h0


def _fast_epsilon(engine: Engine, call: Call) -> float | None:
    """The epsilon of the fused fast path, or ``None`` where the unrolled path must run."""
    if engine.dual or call.layer_weights(0, 0).w_hr is not None:
        return None
    name, module = engine.layer_of(call.weights[0])
    rule = engine.select_rule("linear", name, module)
    if type(rule) is Epsilon:
        return rule.epsilon
    return 0.0 if type(rule) is Zero else None


def _handler(kind: str, step: Step, joint: bool) -> Handler:
    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = _bind(engine, kind, args, kwargs)
        if engine.node(call.input) is None:
            raise engine.unsupported(f"{kind} whose initial state carries relevance but whose input does not")
        eps = _fast_epsilon(engine, call)
        if eps is not None:
            out, finals = _layers(engine, kind, call, _fused(kind, eps))
            for t in (out, *finals):
                engine.track(t)
            return (out, *finals)
        with engine:  # the unrolled steps are ordinary operations: the engine's rules apply to each
            out, finals = _layers(engine, kind, call, _unrolled(engine, step, joint))
        return (out, *finals)

    return handler


register_handler(torch.lstm)(_handler("lstm", _lstm_step, joint=True))
register_handler(torch.gru)(_handler("gru", _gru_step, joint=False))
