"""attnlrp / cp-lrp on every supported ViT family: conservation, batch independence, hygiene, options."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medlrp
from medlrp.lrp.kernels import KERNELS
from medlrp.lrp.transformer import token_relevance, transformer_blocks

sys.path.insert(0, str(Path(__file__).parent))
import vit_zoo  # noqa: E402


def _sums(r: torch.Tensor) -> torch.Tensor:
    return r.flatten(1).sum(1)


@pytest.mark.parametrize("name", list(vit_zoo.ZOO))
def test_cp_lrp_conserves_and_attnlrp_is_batch_independent(name: str) -> None:
    model, x = vit_zoo.make(name)
    # CP-LRP with biases, position embeddings and class tokens zeroed: relevance sums to the logit
    bare = vit_zoo.zero_constants(copy.deepcopy(model))
    e = medlrp.LRP(bare, "cp-lrp")(x)
    assert e.relevance.shape == x.shape
    logit = e.output.gather(1, e.target[:, None])[:, 0]
    assert ((_sums(e.relevance) - logit).abs() / logit.abs() < 1e-3).all()
    # ... and so does the relevance of the tokens leaving the last block (found from the modules)
    assert len(transformer_blocks(bare)) == 2
    tokens, _ = token_relevance(medlrp.LRP(bare, "cp-lrp"), x, e.target, block=-1)
    assert tokens.shape[0] == x.shape[0] and tokens.dim() == 2
    assert ((tokens.sum(1) - logit).abs() / logit.abs() < 1e-3).all()
    # AttnLRP (default for transformers): each sample's map does not depend on the rest of the batch
    lrp = medlrp.LRP(model)
    assert lrp.composite.name == "attnlrp"
    both = lrp.relevance(x, target=[0, 1])
    alone = lrp.relevance(x[1:], target=[1])
    torch.testing.assert_close(both[1:], alone, rtol=1e-8, atol=1e-12)
    assert torch.isfinite(both).all() and both.abs().sum() > 0
    # the exact (create_graph) path computes the same relevance as the fast one
    exact = lrp.relevance(x, target=[0, 1], create_graph=True)
    assert exact.requires_grad
    torch.testing.assert_close(exact.detach(), both, rtol=1e-8, atol=1e-12)


def test_attnlrp_differs_from_cp_lrp_and_float32_agrees() -> None:
    model, x = vit_zoo.make("tiny2d")
    a = medlrp.LRP(model, "attnlrp").relevance(x, 0)
    c = medlrp.LRP(model, "cp-lrp").relevance(x, 0)
    assert (a - c).norm() > 1e-3 * c.norm()  # the softmax path carries relevance under AttnLRP only
    a32 = medlrp.LRP(model.float(), "attnlrp").relevance(x.float(), 0)
    model.double()
    assert (a32.double() - a).norm() / a.norm() < 1e-3


def test_linear_and_first_layer_options() -> None:
    model, x = vit_zoo.make("timm-vit")
    base = medlrp.LRP(model, "attnlrp").relevance(x, 0)
    gamma = medlrp.LRP(model, "attnlrp", linear="gamma", gamma=0.25).relevance(x, 0)
    zbox = medlrp.LRP(model, "attnlrp", first="zbox").relevance(x, 0)
    for r in (gamma, zbox):
        assert r.shape == x.shape and torch.isfinite(r).all()
        assert (r - base).norm() > 1e-3 * base.norm()
    with pytest.raises(medlrp.InputError, match="linear rule"):
        medlrp.LRP(model, "attnlrp", linear="nope")


def test_cnn_composite_on_a_vit_is_an_input_error() -> None:
    model, x = vit_zoo.make("torchvision")
    with pytest.raises(medlrp.InputError, match="transformer"):
        medlrp.LRP(model, "epsilon-plus-flat")
    e = medlrp.explain(model, x)  # composite=None picks attnlrp
    assert e.options["composite"] == "attnlrp"


def test_token_relevance_is_conserved_along_the_residual_stream() -> None:
    model, x = vit_zoo.make("tiny2d")
    bare = vit_zoo.zero_constants(copy.deepcopy(model))
    lrp = medlrp.LRP(bare, "cp-lrp")
    blocks = transformer_blocks(bare)
    assert [n for n, _ in blocks] == ["blocks.0", "blocks.1"]
    for k in (0, -1, "blocks.0"):
        tokens, e = token_relevance(lrp, x, target=1, block=k)
        assert tokens.shape == (2, 1 + 16)
        logit = e.output[:, 1]
        torch.testing.assert_close(tokens.sum(1), logit, rtol=1e-3, atol=0)
    assert not any(m._forward_hooks for m in bare.modules())
    with pytest.raises(medlrp.InputError):
        token_relevance(lrp, x, block=5)


def _snapshot(model: nn.Module) -> tuple:
    params = [(n, p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()]
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
    ]
    return params, hooks, {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, snap: tuple) -> None:
    params, hooks, state = snap
    now = list(model.named_parameters())
    assert [n for n, _ in now] == [n for n, *_ in params]
    for (_, p, value, rg), (_, q) in zip(params, now, strict=True):
        assert p is q and torch.equal(q, value) and q.requires_grad == rg
    assert hooks == [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
    ]
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_model_and_process_untouched_also_after_an_exception() -> None:
    model, x = vit_zoo.make("torchvision")
    other, y = vit_zoo.make("timm-vit")  # a second, unexplained model in the same process
    globals_before = (
        F.softmax,
        F.layer_norm,
        F.scaled_dot_product_attention,
        F.multi_head_attention_forward,
        nn.MultiheadAttention.forward,
        nn.LayerNorm.forward,
        nn.GELU.forward,
        torch.matmul,
    )
    with torch.no_grad():
        out_model, out_other = model(x), other(y)
    snap = _snapshot(model)
    for comp in ("attnlrp", "cp-lrp"):
        medlrp.LRP(model, comp)(x)
        medlrp.LRP(model, comp).relevance(x, 0, create_graph=True)
    _same(model, snap)
    # an exception raised mid-forward leaves everything as it was
    broken = copy.deepcopy(model)
    broken.encoder.layers[1].mlp = _Boom()
    snap_broken = _snapshot(broken)
    with pytest.raises(RuntimeError, match="boom"):
        medlrp.LRP(broken, "attnlrp")(x)
    _same(broken, snap_broken)
    assert globals_before == (
        F.softmax,
        F.layer_norm,
        F.scaled_dot_product_attention,
        F.multi_head_attention_forward,
        nn.MultiheadAttention.forward,
        nn.LayerNorm.forward,
        nn.GELU.forward,
        torch.matmul,
    )
    assert not torch.overrides._get_current_function_mode_stack()
    with torch.no_grad():
        assert torch.equal(model(x), out_model)
        assert torch.equal(other(y), out_other)


def _engine_only(composite: medlrp.lrp.Composite) -> medlrp.lrp.Composite:
    """The same composite without the fast-path specialisations (the engine's generic handlers)."""
    from medlrp.lrp import transformer_fast

    composite.handlers = {
        k: v
        for k, v in composite.handlers.items()
        if getattr(v, "__module__", "") != transformer_fast.__name__
    }
    return composite


@pytest.mark.parametrize("linear", [rule.name for rule, k in KERNELS.items() if k.tokens is not None])
def test_fast_path_equals_the_engines_generic_rules(linear: str) -> None:
    from medlrp.lrp.transformer import attnlrp

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3)).double()
    x_mlp = torch.randn(3, 6, dtype=torch.float64)
    x_mlp[:, 0] = 0.0  # exact zeros: both signed branches of the gamma rule meet there
    models = [vit_zoo.make("timm-vit"), (mlp, x_mlp)]
    for model, x in models:  # the ReLU MLP exercises the gamma rule's non-negative-input branch
        fast = medlrp.LRP(model, "attnlrp", linear=linear).relevance(x, 0)
        generic = medlrp.LRP(model, _engine_only(attnlrp(linear=linear))).relevance(x, 0)
        err = (fast - generic).flatten(1).norm(dim=1) / generic.flatten(1).norm(dim=1)
        assert (err < 1e-10).all(), err
