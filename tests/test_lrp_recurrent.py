"""LRP for nn.LSTM and nn.GRU equals the rules of Arras et al. (2017, 2019) written out step by step.

The references below are plain torch, float64, with no autograd: the forward pass keeps every gate
and state, the relevance is then passed back through time by the paper's equations:

* linear maps: epsilon (``R_in = x * W^T (R / stab(z))``); an LSTM step's pre-activation is one linear
  map of ``[x_t, h_{t-1}]``;
* gates get nothing, ``gate * signal`` gives all to the signal; ``tanh`` passes relevance unchanged;
* sums split relevance in proportion to the summands (stabiliser 1e-6).
"""

import pytest
import torch
from torch import nn

import medlrp
from medlrp.errors import UnsupportedLayerError

EPS = 1e-6  # the epsilon composite's epsilon, and the proportional split's stabiliser
H, F_IN, T = 4, 3, 6


def stab(z):
    return z + EPS * torch.where(z >= 0, 1.0, -1.0).to(z)


def epsilon(x, w, z, r):
    """LRP-epsilon through ``z = x W^T + b``: the relevance of ``x``."""
    return x * ((r / stab(z)) @ w)


class Head(nn.Module):
    """A recurrent layer, its last output through a linear head: ``(N, features, T) -> (N, 2)``."""

    def __init__(self, rnn, bias=True):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 2, bias=bias)

    def forward(self, x):
        seq = x.transpose(1, 2) if self.rnn.batch_first else x.permute(2, 0, 1)
        out, _ = self.rnn(seq)
        return self.head(out[:, -1] if self.rnn.batch_first else out[-1])


def make(cls, seed=0, bias=True, **kw):
    torch.manual_seed(seed)
    model = Head(cls(F_IN, H, bias=bias, **kw), bias=bias).double().eval()
    x = torch.randn(2, F_IN, T, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    return model, x


def head_relevance(model, h_last, target):
    """Relevance of the head's input for the target logit (epsilon)."""
    w, b = model.head.weight, model.head.bias
    z = h_last @ w.T + (0 if b is None else b)
    r = torch.zeros_like(z).scatter_(1, target[:, None], z.gather(1, target[:, None]))
    return epsilon(h_last, w, z, r)


def lstm_reference(model, x, target):
    """Arras et al. 2017: the LSTM's relevance, forward and backward written out per step."""
    lstm = model.rnn
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    b = lstm.bias_ih_l0 + lstm.bias_hh_l0
    xs = x.permute(2, 0, 1)  # (T, N, F)
    h, c = torch.zeros(2, H, dtype=x.dtype), torch.zeros(2, H, dtype=x.dtype)
    keep = []
    for t in range(T):
        z = xs[t] @ w_ih.T + h @ w_hh.T + b
        i, f, g, o = (
            z[:, :H].sigmoid(),
            z[:, H : 2 * H].sigmoid(),
            z[:, 2 * H : 3 * H],
            z[:, 3 * H :].sigmoid(),
        )
        c_new = f * c + i * g.tanh()
        keep.append((h, c, i, f, g, c_new))
        h, c = o * c_new.tanh(), c_new
    r_h = head_relevance(model, h, target)
    r_c = torch.zeros_like(c)
    w_g = torch.cat([w_ih, w_hh], 1)[2 * H : 3 * H]  # the candidate's rows of the joint map
    r_x = torch.zeros_like(xs)
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, c_t = keep[t]
        r_c = r_c + r_h  # h_t = o * tanh(c_t): the gate o takes nothing, tanh passes relevance on
        r_fc = f * c_prev / stab(c_t) * r_c  # c_t = f * c_{t-1} + i * g: proportional split
        r_g = i * g.tanh() / stab(c_t) * r_c  # i * tanh(g): signal-take-all, then tanh passes it on
        joint = epsilon(torch.cat([xs[t], h_prev], 1), w_g, g, r_g)  # z_g = [W_ig W_hg] [x_t h_{t-1}] + b_g
        r_x[t], r_h = joint[:, :F_IN], joint[:, F_IN:]
        r_c = r_fc
    return r_x.permute(1, 2, 0)


def gru_reference(model, x, target):
    """Arras et al. 2019's rules on torch's GRU: ``h_t = (1 - z) n + z h_{t-1}``, ``r`` a gate."""
    gru = model.rnn
    w_ih, w_hh, b_ih, b_hh = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    xs = x.permute(2, 0, 1)
    h = torch.zeros(2, H, dtype=x.dtype)
    keep = []
    for t in range(T):
        gx, gh = xs[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = (gx[:, :H] + gh[:, :H]).sigmoid()
        z = (gx[:, H : 2 * H] + gh[:, H : 2 * H]).sigmoid()
        a, hn = gx[:, 2 * H :], gh[:, 2 * H :]
        n = (a + r * hn).tanh()
        h_new = (1 - z) * n + z * h
        keep.append((h, r, z, a, hn, n, h_new))
        h = h_new
    r_h = head_relevance(model, h, target)
    r_x = torch.zeros_like(xs)
    for t in reversed(range(T)):
        h_prev, r, z, a, hn, n, h_t = keep[t]
        r_n = (1 - z) * n / stab(h_t) * r_h  # proportional split; the gates (1 - z), z take nothing
        r_direct = z * h_prev / stab(h_t) * r_h
        s = a + r * hn  # tanh passes relevance on; the candidate's sum splits proportionally
        r_a, r_hn = a / stab(s) * r_n, r * hn / stab(s) * r_n  # r * hn: the gate r takes nothing
        r_x[t] = epsilon(xs[t], w_ih[2 * H :], a, r_a)
        r_h = r_direct + epsilon(h_prev, w_hh[2 * H :], hn, r_hn)
    return r_x.permute(1, 2, 0)


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize(("cls", "reference"), [(nn.LSTM, lstm_reference), (nn.GRU, gru_reference)])
def test_rules_equal_the_equations(cls, reference, create_graph):
    model, x = make(cls)
    target = torch.tensor([0, 1])
    ours = medlrp.LRP(model, "epsilon").relevance(x, target, create_graph=create_graph)
    torch.testing.assert_close(ours, reference(model, x, target), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize(
    "kw", [{}, {"batch_first": True}, {"num_layers": 2, "bidirectional": True}, {"num_layers": 2}]
)
def test_conserves_the_logit_without_biases(cls, kw):
    model, x = make(cls, bias=False, **kw)
    e = medlrp.explain(model, x, composite="epsilon")
    logit = e.output.gather(1, e.target[:, None])[:, 0]
    # the stabilisers (1e-6 per sum and linear map) absorb a few 1e-6: tiny random-weight logits
    torch.testing.assert_close(e.relevance.sum((1, 2)), logit, rtol=1e-3, atol=1e-5)
    assert (e.relevance.abs().sum(1) > 0).all()  # spread over every time step


def test_biases_absorb_relevance():
    model, x = make(nn.LSTM, bias=True)
    e = medlrp.explain(model, x, composite="epsilon")
    logit = e.output.gather(1, e.target[:, None])[:, 0]
    assert not torch.allclose(e.relevance.sum((1, 2)), logit, rtol=1e-3)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_bidirectional_two_layers_batch_first_fast_equals_dual(cls):
    model, x = make(cls, num_layers=2, bidirectional=True, batch_first=True)
    lrp = medlrp.LRP(model, "epsilon")
    fast = lrp.relevance(x, 1)
    dual = lrp.relevance(x, 1, create_graph=True)
    torch.testing.assert_close(fast, dual, rtol=1e-10, atol=1e-14)
    # the backward direction reads the sequence from the end: the first step is relevant too
    assert fast[:, :, 0].abs().sum() > 0


class HandLSTM(nn.Module):
    """An LSTM cell written by hand (two linear maps and a sum, as many cells are written)."""

    def __init__(self, lstm, joint):
        super().__init__()
        self.joint = joint
        self.ih = nn.Linear(F_IN, 4 * H)
        self.hh = nn.Linear(H, 4 * H)
        self.both = nn.Linear(F_IN + H, 4 * H)
        with torch.no_grad():
            self.ih.weight.copy_(lstm.weight_ih_l0)
            self.ih.bias.copy_(lstm.bias_ih_l0)
            self.hh.weight.copy_(lstm.weight_hh_l0)
            self.hh.bias.copy_(lstm.bias_hh_l0)
            self.both.weight.copy_(torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], 1))
            self.both.bias.copy_(lstm.bias_ih_l0 + lstm.bias_hh_l0)

    def forward(self, x):
        h = c = torch.zeros(x.shape[0], H, dtype=x.dtype)
        for t in range(x.shape[2]):
            z = self.both(torch.cat([x[:, :, t], h], 1)) if self.joint else self.ih(x[:, :, t]) + self.hh(h)
            i, f, g, o = z.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return h


@pytest.mark.parametrize("joint", [True, False])
def test_hand_written_cell_equals_nn_lstm(joint):
    model, x = make(nn.LSTM)
    hand = nn.Sequential(HandLSTM(model.rnn, joint), model.head).double().eval()
    torch.testing.assert_close(hand(x), model(x))
    ours = medlrp.LRP(model, "epsilon").relevance(x, 0)
    theirs = medlrp.LRP(hand, "epsilon").relevance(x, 0)
    # the joint map is the paper's form exactly; two maps and a sum split by the proportional rule
    # first and by epsilon second, which differs from one epsilon only by the stabilisers
    tol = {"rtol": 1e-10, "atol": 1e-14} if joint else {"rtol": 1e-3, "atol": 1e-7}
    torch.testing.assert_close(theirs, ours, **tol)


def test_relevance_is_differentiable():
    torch.manual_seed(0)
    model = Head(nn.LSTM(2, 2)).double().eval()
    x = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    lrp = medlrp.LRP(model, "epsilon")
    assert torch.autograd.gradcheck(lambda v: lrp.relevance(v, 0, create_graph=True), (x,))


def test_packed_sequence_is_refused():
    model, x = make(nn.LSTM)

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = model.rnn

        def forward(self, x):
            seq = nn.utils.rnn.pack_padded_sequence(x.permute(2, 0, 1), torch.tensor([T, T - 1]))
            return self.rnn(seq)[1][0][-1]

    with pytest.raises(UnsupportedLayerError, match="packed sequence"):
        medlrp.LRP(Packed().eval(), "epsilon").relevance(x, 0)


def test_model_is_left_unchanged():
    model, x = make(nn.LSTM, num_layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    medlrp.LRP(model, "epsilon").relevance(x, 0)
    assert [id(p) for p in model.parameters()] == params
    assert [p.requires_grad for p in model.parameters()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.rnn._forward_hooks == {} and model.rnn._forward_pre_hooks == {}


def test_default_composite_for_recurrent_models_is_epsilon():
    model, _ = make(nn.GRU)
    assert medlrp.lrp.default_composite_name(model) == "epsilon"


class FinalStates(nn.Module):
    """Reads the final hidden and cell states (``h_n``, ``c_n``) instead of the output sequence."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 2)

    def forward(self, x):
        _, (h_n, c_n) = self.rnn(x.permute(2, 0, 1))
        return self.head(h_n[-1] + c_n[-2])


def test_final_states_fast_equals_dual():
    torch.manual_seed(3)
    model = FinalStates(nn.LSTM(F_IN, H, num_layers=2, bidirectional=True)).double().eval()
    x = torch.randn(2, F_IN, T, dtype=torch.float64)
    lrp = medlrp.LRP(model, "epsilon")
    fast = lrp.relevance(x, 0)
    torch.testing.assert_close(fast, lrp.relevance(x, 0, create_graph=True), rtol=1e-10, atol=1e-14)
    assert fast.abs().sum() > 0


class HandGRU(nn.Module):
    """torch's GRU cell written by hand: ``1 - z`` must count as a gate, as ``z`` does."""

    def __init__(self, gru):
        super().__init__()
        self.ih = nn.Linear(F_IN, 3 * H)
        self.hh = nn.Linear(H, 3 * H)
        with torch.no_grad():
            for lin, w, b in (
                (self.ih, gru.weight_ih_l0, gru.bias_ih_l0),
                (self.hh, gru.weight_hh_l0, gru.bias_hh_l0),
            ):
                lin.weight.copy_(w)
                lin.bias.copy_(b)

    def forward(self, x):
        h = torch.zeros(x.shape[0], H, dtype=x.dtype)
        for t in range(x.shape[2]):
            xr, xz, xn = self.ih(x[:, :, t]).chunk(3, 1)
            hr, hz, hn = self.hh(h).chunk(3, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        return h


def test_hand_written_gru_cell_equals_nn_gru():
    model, x = make(nn.GRU)
    hand = nn.Sequential(HandGRU(model.rnn), model.head).double().eval()
    torch.testing.assert_close(hand(x), model(x))
    ours = medlrp.LRP(model, "epsilon").relevance(x, 1)
    torch.testing.assert_close(medlrp.LRP(hand, "epsilon").relevance(x, 1), ours, rtol=1e-10, atol=1e-14)


def test_hand_written_gru_fast_equals_dual():
    model, x = make(nn.GRU)
    hand = nn.Sequential(HandGRU(model.rnn), model.head).double().eval()
    lrp = medlrp.LRP(hand, "epsilon")
    torch.testing.assert_close(
        lrp.relevance(x, 0), lrp.relevance(x, 0, create_graph=True), rtol=1e-10, atol=1e-14
    )


class StatesFromInput(nn.Module):
    """Initial states computed from the input (they carry relevance), a projected LSTM optional."""

    def __init__(self, proj_size=0):
        super().__init__()
        self.init = nn.Linear(F_IN, H)
        self.rnn = nn.LSTM(F_IN, H, proj_size=proj_size)
        self.head = nn.Linear(proj_size or H, 2)

    def forward(self, x):
        c0 = torch.tanh(self.init(x[:, :, 0]))[None]
        h0 = c0[..., : self.head.in_features]
        out, _ = self.rnn(x.permute(2, 0, 1), (h0, c0))
        return self.head(out[-1])


@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("rule", ["epsilon", "zero"])
def test_states_from_input_and_lrp0_fast_equals_dual(proj_size, rule):
    torch.manual_seed(4)
    model = StatesFromInput(proj_size).double().eval()
    x = torch.randn(2, F_IN, T, dtype=torch.float64)
    composite = "epsilon" if rule == "epsilon" else medlrp.lrp.Composite(dense=medlrp.lrp.Zero())
    lrp = medlrp.LRP(model, composite)
    fast = lrp.relevance(x, 0)
    torch.testing.assert_close(fast, lrp.relevance(x, 0, create_graph=True), rtol=1e-9, atol=1e-13)
    assert fast[:, :, 0].abs().sum() > 0  # the first sample also reaches the logit through the states
