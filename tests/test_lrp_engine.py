"""The LRP engine: API, batching, dtypes, second order, model hygiene, errors, graph coverage."""

import copy

import pytest
import torch
from torch import nn

import medlrp
from medlrp.lrp import Composite, Epsilon, Flat, ZBox

DT = torch.float64


class Block(nn.Module):
    """A residual block with BN and ``out += identity`` (in-place, like torchvision)."""

    def __init__(self, c, conv=nn.Conv2d, bn=nn.BatchNorm2d):
        super().__init__()
        self.conv1, self.bn1 = conv(c, c, 3, padding=1, bias=False), bn(c)
        self.conv2, self.bn2 = conv(c, c, 3, padding=1, bias=False), bn(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class SE(nn.Module):
    """Squeeze-excitation: a sigmoid gate multiplies the features."""

    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class Net(nn.Module):
    def __init__(self, dims=2, classes=4):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        bn = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        pool = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
        self.stem = nn.Sequential(conv(2, 4, 3, padding=1), bn(4), nn.ReLU())
        self.block = Block(4, conv, bn)
        self.se = SE(4) if dims == 2 else nn.Identity()
        self.head = nn.Sequential(nn.SiLU(), pool(1), nn.Flatten(), nn.Linear(4, classes))

    def forward(self, x):
        x = self.block(self.stem(x))
        x = torch.cat([x, self.se(x)], 1)[:, :4] + torch.cat([x, x], 1)[:, 4:]
        return self.head(x)


def randomize(model, seed=0, shifts=True):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if shifts:
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def net(dims=2, dtype=DT, seed=0):
    torch.manual_seed(seed)
    return randomize(Net(dims), seed).to(dtype)


def inputs(dims=2, n=3, dtype=DT, seed=1):
    return torch.randn((n, 2) + (8,) * dims, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", medlrp.COMPOSITES.names())
def test_every_registered_composite_runs_batched_and_independent(name):
    model, x = net(), inputs()
    lrp = medlrp.LRP(model, name)
    e = lrp(x, target=[0, 1, 2])
    assert isinstance(e, medlrp.Explanation) and e.method == "lrp"
    assert e.relevance.shape == x.shape and e.target.tolist() == [0, 1, 2]
    assert torch.equal(e.output, model(x).detach())
    assert e.options["composite"] == name
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
    alone = lrp.relevance(x[1:2], 1)
    torch.testing.assert_close(e.relevance[1:2], alone, rtol=1e-9, atol=1e-12)


def test_explain_facade_and_default_composite():
    model, x = net(), inputs()
    e = medlrp.explain(model, x, method="lrp")
    assert e.options["composite"] == "epsilon-plus-flat"
    assert e.target.tolist() == model(x).argmax(1).tolist()
    ref = medlrp.LRP(model, "epsilon-plus-flat")(x).relevance
    assert torch.equal(e.relevance, ref)


def test_per_sample_targets_and_start_options():
    model, x = net(), inputs()
    lrp = medlrp.LRP(model, "epsilon")
    both = lrp.relevance(x, [3, 0, 1])
    for i, t in enumerate([3, 0, 1]):
        torch.testing.assert_close(both[i], lrp.relevance(x, t)[i])
    out = model(x).detach()
    one_hot = medlrp.LRP(model, "epsilon", start="one-hot").relevance(x, 2)
    torch.testing.assert_close(one_hot, lrp.relevance(x, 2) / out[:, 2, None, None, None])
    every = medlrp.LRP(model, "epsilon", start="all-classes").relevance(x, 0)
    torch.testing.assert_close(every, sum(lrp.relevance(x, k) for k in range(4)))
    diff = medlrp.LRP(model, "epsilon", start="logit-difference").relevance(x, 0)
    want = lrp.relevance(x, 0) - sum(lrp.relevance(x, k) for k in (1, 2, 3)) / 3
    torch.testing.assert_close(diff, want)


@pytest.mark.parametrize("name", ["epsilon", "epsilon-gamma-box", "epsilon-alpha2-beta1-flat"])
def test_float32_agrees_with_float64(name):
    m64, x64 = net(), inputs()
    m32 = copy.deepcopy(m64).float()
    r64 = medlrp.LRP(m64, name).relevance(x64, 1)
    r32 = medlrp.LRP(m32, name).relevance(x64.float(), 1)
    assert r32.dtype == torch.float32
    err = (r32.double() - r64).norm() / r64.norm()
    assert err < 1e-4


def test_3d_network_conserves_relevance():
    model = randomize(Net(dims=3), shifts=False).double()
    zero_biases(model)
    x = inputs(dims=3, n=2)
    rel = medlrp.LRP(model, "epsilon").relevance(x, 1)
    logit = model(x)[:, 1]
    torch.testing.assert_close(rel.sum((1, 2, 3, 4)), logit.detach(), rtol=1e-3, atol=1e-9)


def zero_biases(model):
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()


def test_conservation_through_residual_gate_and_concat():
    model = net()
    zero_biases(model)
    x = inputs()
    rel = medlrp.LRP(model, "epsilon").relevance(x, 2)
    torch.testing.assert_close(rel.sum((1, 2, 3)), model(x)[:, 2].detach(), rtol=1e-3, atol=1e-9)


def test_squeeze_excitation_gate_is_a_constant_weight():
    se = SE(3).double()
    model = nn.Sequential(se, nn.Flatten()).eval()
    x = torch.randn(2, 3, 2, 2, dtype=DT)
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True))))).detach()
    r0 = torch.randn(2, 12, dtype=DT)
    rel = medlrp.LRP(model, "epsilon", start=lambda o, t: r0).relevance(x, 0)
    # the gate is a constant weight, so all relevance goes to the gated features unchanged
    torch.testing.assert_close(rel.reshape(2, -1), r0)
    assert gate.shape == (2, 3, 1, 1)


def test_create_graph_gradcheck_parameters_and_input():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 2),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Conv2d(2, 2, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2, 2),
    )
    model = randomize(model).double()
    with torch.no_grad():
        model[1].weight[1] = -0.7  # a negative BatchNorm scale
    x = torch.randn(2, 1, 3, 3, dtype=DT)
    names = ["0.bias", "1.weight", "1.bias", "3.weight", "6.weight"]
    params = dict(model.named_parameters())

    class Functional(nn.Module):
        def __init__(self, values):
            super().__init__()
            self.inner, self.values = model, values

        def forward(self, inp):
            return torch.func.functional_call(
                self.inner, dict(zip(names, self.values, strict=True)), (inp,), strict=False
            )

    for name in ["epsilon", "epsilon-plus", "epsilon-gamma-box"]:

        def relevance(*values, name=name):
            return medlrp.LRP(Functional(values), name).relevance(x, [0, 1], create_graph=True)

        values = [params[n].detach().clone().requires_grad_() for n in names]
        assert torch.autograd.gradcheck(relevance, values, eps=1e-6, atol=1e-6, rtol=1e-4)
        lrp = medlrp.LRP(model, name)
        xg = x.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda v, lrp=lrp: lrp.relevance(v, [0, 1], create_graph=True),
            [xg],
            eps=1e-6,
            atol=1e-6,
            rtol=1e-4,
        )
        fast = lrp.relevance(x, [0, 1])
        torch.testing.assert_close(lrp.relevance(x, [0, 1], create_graph=True).detach(), fast)


def snapshot(model):
    return {
        "params": [(n, p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), m.training)
            for m in model.modules()
        ],
        "forward": type(model).forward,
        "dict": set(model.__dict__),
    }


def assert_unchanged(model, before, x, out_before):
    after = snapshot(model)
    for (n, p, v, rg), (n2, p2, v2, rg2) in zip(before["params"], after["params"], strict=True):
        assert n == n2 and p is p2 and torch.equal(v, v2) and rg == rg2
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert before["hooks"] == after["hooks"] and before["forward"] is after["forward"]
    assert before["dict"] == after["dict"] and "forward" not in model.__dict__
    assert torch.equal(model(x), out_before)


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_model_is_left_untouched_also_after_an_exception():
    model, x = net(), inputs()
    model.block.conv1.weight.requires_grad_(False)
    out = model(x)
    before = snapshot(model)
    for name in medlrp.COMPOSITES.names():
        medlrp.LRP(model, name)(x)
        medlrp.LRP(model, name).relevance(x, 1, create_graph=True).sum().backward()
    assert_unchanged(model, before, x, out)
    model.zero_grad(set_to_none=True)
    broken = nn.Sequential(model.stem, Boom())
    with pytest.raises(RuntimeError, match="boom"):
        medlrp.LRP(broken, "epsilon-gamma-box")(x)
    assert_unchanged(model, before, x, out)
    assert not hasattr(x, "_medlrp_node")


def test_unsupported_operation_names_module_and_type():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    model = nn.Sequential(nn.Linear(3, 3), Odd()).double()
    with pytest.raises(medlrp.UnsupportedLayerError, match=r"'1' \(Odd\).*cumsum"):
        medlrp.LRP(model, "epsilon")(torch.randn(2, 3, dtype=DT))

    class Writes(nn.Module):
        def forward(self, x):
            x[:, 0] = 0.0
            return x

    writes = nn.Sequential(nn.Linear(3, 3), Writes()).double()
    with pytest.raises(medlrp.UnsupportedLayerError, match=r"'1' \(Writes\).*in-place"):
        medlrp.LRP(writes, "epsilon")(torch.randn(2, 3, dtype=DT))

    class Modulo(nn.Module):  # (layer norm, once the example here, has a rule now: issue 15)
        def forward(self, x):
            return x % 2.0  # torch turns errors inside Tensor.__mod__ into NotImplemented

    modulo = nn.Sequential(nn.Linear(3, 3), Modulo()).double()
    with pytest.raises(medlrp.UnsupportedLayerError, match=r"'1' \(Modulo\).*(__mod__|remainder)"):
        medlrp.LRP(modulo, "epsilon")(torch.randn(2, 3, dtype=DT))


def test_running_module_is_tracked_per_thread_and_no_global_hook_outlives_the_call():
    """The module named in errors comes from global module hooks that live for one call and one thread."""
    from concurrent.futures import ThreadPoolExecutor

    from torch.nn.modules import module as torch_module

    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    hooks = (torch_module._global_forward_pre_hooks, torch_module._global_forward_hooks)
    before = [dict(h) for h in hooks]
    model, x = net(), inputs()
    serial = medlrp.LRP(model, "epsilon-gamma-box").relevance(x, 1)
    with ThreadPoolExecutor(4) as pool:  # other threads' calls do not see (or break) one another's stacks
        odd = nn.Sequential(nn.Linear(3, 3), Odd()).double()
        bad = [pool.submit(medlrp.LRP(odd, "epsilon"), torch.randn(2, 3, dtype=DT)) for _ in range(3)]
        good = [pool.submit(medlrp.LRP(model, "epsilon-gamma-box").relevance, x, 1) for _ in range(3)]
        for f in good:
            torch.testing.assert_close(f.result(), serial, rtol=1e-12, atol=1e-14)
        for f in bad:
            with pytest.raises(medlrp.UnsupportedLayerError, match=r"'1' \(Odd\)"):
                f.result()
    assert [dict(h) for h in hooks] == before


def test_train_mode_batchnorm_is_refused():
    model = net().train()
    with pytest.raises(medlrp.InputError, match="eval"):
        medlrp.LRP(model, "epsilon")(inputs())
    assert model.training


def test_reference_rules_only_on_input_layers_and_custom_composites():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2)).double()
    x = torch.randn(2, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    assert medlrp.LRP(model, "epsilon")(x).relevance.abs().sum() > 0
    with pytest.raises(medlrp.InputError, match="model input"):
        medlrp.LRP(model, Composite(name_map={"2": Flat()}))(x)
    by_type = Composite(type_map=[(nn.Linear, Epsilon(0.5))])
    by_name = Composite(name_map={"0": Epsilon(0.5), "2": Epsilon(0.5)})
    assert torch.equal(medlrp.LRP(model, by_type)(x).relevance, medlrp.LRP(model, by_name)(x).relevance)
    boxed = medlrp.LRP(model, Composite(first=ZBox(-1.0, 1.0)))(x).relevance
    assert not torch.equal(boxed, medlrp.LRP(model, "epsilon")(x).relevance)


def test_bad_usage_is_input_error():
    model, x = net(), inputs()
    with pytest.raises(medlrp.InputError, match="unknown composite"):
        medlrp.LRP(model, "nope")
    with pytest.raises(medlrp.InputError, match="epsilon"):
        medlrp.LRP(model, "epsilon", gamma=2.0)
    with pytest.raises(medlrp.InputError, match="start"):
        medlrp.LRP(model, start="softmax")
    with pytest.raises(medlrp.InputError, match="range"):
        medlrp.LRP(model)(x, target=9)
    vit_like = nn.TransformerEncoderLayer(8, 2)
    with pytest.raises(medlrp.InputError, match="transformer"):
        medlrp.LRP(vit_like, "epsilon")


def test_tuple_outputs_and_torchscript_refusal():
    import medlrp

    torch.manual_seed(0)
    base = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 3)
    )
    base.eval()

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base

        def forward(self, x):
            return self.net(x), x

    x = torch.randn(2, 1, 32, 32)
    plain = medlrp.explain(base, x, composite="epsilon")
    paired = medlrp.explain(Pair().eval(), x, composite="epsilon")
    torch.testing.assert_close(paired.relevance, plain.relevance)
    with pytest.raises(medlrp.InputError, match="TorchScript"):
        medlrp.LRP(torch.jit.script(base))


def test_batchnorm_statistics_with_a_graph_are_explained_exactly():
    """Running statistics that require grad (a training batch's own, rebound) give the same relevance,
    and the relevance is differentiable w.r.t. them (exact: gradcheck)."""
    model, x = net(), inputs()
    bn = model.block.bn1
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    reference = medlrp.LRP(model, "epsilon-plus").relevance(x, 1)

    def relevance(mean, var):
        bn.running_mean, bn.running_var = mean, var
        try:
            return medlrp.LRP(model, "epsilon-plus").relevance(x, 1, create_graph=True)
        finally:
            bn.running_mean, bn.running_var = mean0, var0

    mean, var = mean0.clone().requires_grad_(), var0.clone().requires_grad_()
    r = relevance(mean, var)
    torch.testing.assert_close(r.detach(), reference)
    (gm, gv) = torch.autograd.grad(r.pow(2).sum(), [mean, var])
    assert gm.abs().sum() > 0 and gv.abs().sum() > 0
    assert torch.autograd.gradcheck(relevance, [mean, var], eps=1e-6, atol=1e-6, rtol=1e-4)
    bn.running_mean, bn.running_var = mean.detach().requires_grad_(), var.detach().requires_grad_()
    try:  # the fast path (no graph) too
        torch.testing.assert_close(medlrp.LRP(model, "epsilon-plus").relevance(x, 1), reference)
    finally:
        bn.running_mean, bn.running_var = mean0, var0


def test_in_place_relu_after_a_read_is_an_error_not_a_wrong_map():
    """An in-place ReLU runs in place (as in the model) once its input's coefficients are settled;
    a layer output changed in place after another rule read it raises instead of a silently wrong map."""

    class Fine(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(3, 2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            y = torch.relu_(y) + nn.functional.relu(y, inplace=True)  # twice in place: idempotent
            return self.fc(y.mean((2, 3)))

    class Bad(Fine):
        def forward(self, x):
            y = self.bn(self.conv(x))
            h = nn.functional.silu(y)  # reads y (pass rule)
            nn.functional.relu(y, inplace=True)  # ... then y changes
            return self.fc((h + y).mean((2, 3)))

    torch.manual_seed(0)
    fine = randomize(Fine()).double()
    x = inputs()
    inplace = medlrp.LRP(fine, "epsilon").relevance(x, 0)
    out_of_place = medlrp.LRP(fine, "epsilon").relevance(x, 0, create_graph=True).detach()
    torch.testing.assert_close(inplace, out_of_place)
    bad = Bad()
    bad.load_state_dict(fine.state_dict())
    bad = bad.double().eval()
    with pytest.raises(RuntimeError, match="modified in place"):
        medlrp.LRP(bad, "epsilon").relevance(x, 0)


@pytest.mark.parametrize("name", medlrp.COMPOSITES.names())
def test_fused_fast_path_equals_the_general_rules(name):
    """The fast path (fused coefficients, in-place ReLUs, compact states) equals the general path."""

    class Convs(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
            self.c3, self.c4 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = nn.functional.relu(self.b1(self.c1(x)), inplace=True)
            h = torch.relu_(self.b2(self.c2(h)) + h)  # a merged output read by a sum, not a ReLU
            h = nn.functional.relu(self.c3(h - 0.5), inplace=True) + h  # unmerged, inputs of both signs
            h = self.c4(h - 0.5) + h  # inputs of both signs, read by a sum
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(0)
    model = randomize(Convs()).double()
    with torch.no_grad():
        model.b2.weight[1] = -0.5  # a negative BatchNorm scale: the general path for that layer
    x = inputs()
    lrp = medlrp.LRP(model, name)
    fast = lrp.relevance(x, [0, 1, 2])
    general = lrp.relevance(x, [0, 1, 2], create_graph=True).detach()
    torch.testing.assert_close(fast, general, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        model.b2.weight.abs_()
    torch.testing.assert_close(
        lrp.relevance(x, [0, 1, 2]),
        lrp.relevance(x, [0, 1, 2], create_graph=True).detach(),
        rtol=1e-9,
        atol=1e-12,
    )
