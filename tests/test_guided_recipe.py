"""The guided-training recipe: the bounded guidance gradient, the ramp, the defaults (properties only)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medlrp.errors import InputError
from medlrp.lrp.composites import resolve_composite
from medlrp.models.vit import vit2d
from medlrp.train.guided import (
    EXPLAIN_EVERY_BOUNDED,
    EXPLAIN_EVERY_UNBOUNDED,
    GUIDANCE_BOUND,
    GUIDANCE_TRANSFORMER_EPSILON,
    GuidedLoss,
    guidance_options,
    logit_difference,
    lrp_relevance,
)
from medlrp.train.guided_clip import bounded_sum, gradient_norm


def _toy(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def _data(n=6, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g, dtype=torch.float64)
    mask = torch.zeros(n, 1, size, size, dtype=torch.float64)
    mask[..., 1:5, 1:5] = 1
    return x, torch.arange(n) % 2, mask


@pytest.mark.parametrize("weight", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("bound", [0.0, 0.5, 2.0])
def test_bounded_sum_value_gradient_and_bound(weight, bound):
    model = _toy()
    params = list(model.parameters())
    x, y, _ = _data()

    def parts():
        out = model(x)
        return F.cross_entropy(out, y), weight * (out[:, 0] ** 2).mean()

    rest, term = parts()
    g_rest = torch.autograd.grad(rest, params, retain_graph=True)
    g_term = torch.autograd.grad(term, params)
    rest, term = parts()
    loss, ratio = bounded_sum(rest, term, params, bound)
    assert loss.item() == pytest.approx((rest + term).item(), rel=1e-12)
    assert ratio == pytest.approx(float(gradient_norm(g_term) / gradient_norm(g_rest)), rel=1e-10)
    got = torch.autograd.grad(loss, params)
    # the gradient is the rest's plus the term's, scaled down only where it exceeds the bound
    scale = min(1.0, bound / ratio)
    for a, b, c in zip(got, g_rest, g_term, strict=True):
        torch.testing.assert_close(a, b + scale * c)
    part = [a - b for a, b in zip(got, g_rest, strict=True)]
    assert float(gradient_norm(part)) <= bound * float(gradient_norm(g_rest)) * (1 + 1e-9) or scale == 1.0
    assert float(gradient_norm(part)) <= max(bound, ratio) * float(gradient_norm(g_rest)) * (1 + 1e-9)


def test_guided_loss_bounds_the_explanation_gradient_in_training_steps():
    model = _toy().train()
    x, y, mask = _data()
    params = list(model.parameters())
    # the same loss without the explanation term (explain_start far away), unbounded
    rest_crit = GuidedLoss(1e3, composite="epsilon", explain_every=1, reference_every=1, explain_start=10**9)
    rest_loss, _ = rest_crit(model, x, y, mask)
    g_rest = torch.autograd.grad(rest_loss, params)
    for bound in (0.01, 0.1):
        crit = GuidedLoss(1e3, composite="epsilon", explain_every=1, reference_every=1, guidance_bound=bound)
        free = GuidedLoss(1e3, composite="epsilon", explain_every=1, reference_every=1, guidance_bound=None)
        loss, parts = crit(model, x, y, mask)
        free_loss, _ = free(model, x, y, mask)
        assert loss.item() == pytest.approx(free_loss.item(), rel=1e-10)  # the value is the loss's
        got = torch.autograd.grad(loss, params)
        part = [a - b for a, b in zip(got, g_rest, strict=True)]
        assert parts["guidance_grad_ratio"] > bound  # weight 1e3: the bound is hit
        assert float(gradient_norm(part)) == pytest.approx(bound * float(gradient_norm(g_rest)), rel=1e-8)
        # evaluation calls (eval mode) return the plain sum and count no step
        steps = crit.steps
        ev, ev_parts = crit(model.eval(), x, y, mask)
        model.train()
        assert crit.steps == steps
        assert "guidance_grad_ratio" not in ev_parts and ev.item() == pytest.approx(free_loss.item())
    with pytest.raises(InputError, match="guidance_bound"):
        GuidedLoss(1.0, guidance_bound=-1.0)


def test_explanation_term_ramps_in_linearly():
    crit = GuidedLoss(1.0, explain_start=3, explain_ramp=4)
    assert [crit.ramp(s) for s in range(9)] == [0, 0, 0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert [GuidedLoss(1.0, explain_start=2).ramp(s) for s in range(4)] == [0, 0, 1, 1]
    with pytest.raises(InputError, match="explain_ramp"):
        GuidedLoss(1.0, explain_ramp=-1)
    # the ramp scales the term in the loss: loss - rest == share * weight * guidance
    model = _toy().train()
    x, y, mask = _data()
    ramped = GuidedLoss(2.0, composite="epsilon", explain_every=1, reference_weight=0.0, explain_ramp=3)
    for step in range(5):
        loss, parts = ramped(model, x, y, mask)
        share = min(1.0, (step + 1) / 4)
        expected = parts["ce"] + share * 2.0 * parts["guidance"]
        assert loss.item() == pytest.approx(float(expected), rel=1e-10)


def test_defaults_are_the_robust_recipe():
    crit = GuidedLoss()
    assert crit.guidance_bound == "auto" and crit.explain_ramp == 0
    assert crit.guidance_weight == 0.3 and crit.explain_every == "auto" and crit.reference_weight == 3.0
    assert crit.reference_every == 1 and crit.counterfactual_weight == 3.0
    vit = vit2d(image_size=16, patch_size=8, dim=8, depth=1, heads=2).eval()
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    # "auto": any model explained by the default relevance is bounded (its gradient spikes, CNN or
    # transformer), own choices of relevance not
    assert crit.bound_for(vit) == crit.bound_for(cnn) == GUIDANCE_BOUND == 0.3
    # "auto": a bounded term costs a second backward, so it explains every 64th case, else every 32nd
    assert crit.explain_every_for(vit) == crit.explain_every_for(cnn) == EXPLAIN_EVERY_BOUNDED == 64
    assert GuidedLoss(composite="attnlrp").explain_every_for(vit) == EXPLAIN_EVERY_UNBOUNDED == 32
    assert GuidedLoss(composite="epsilon-alpha2-beta1-flat").bound_for(cnn) is None
    assert GuidedLoss(guidance_bound=None).explain_every_for(cnn) == 32
    assert GuidedLoss(guidance_bound=0.5).explain_every_for(cnn) == 64
    assert GuidedLoss(explain_every=5, guidance_bound=None).explain_every_for(vit) == 5
    with pytest.raises(InputError, match="explain_every"):
        GuidedLoss(explain_every="often")
    with pytest.raises(InputError, match="auto"):
        crit.selection(4, None)
    assert GuidedLoss(composite="attnlrp").bound_for(vit) is None
    assert (
        GuidedLoss(guidance_bound=0.5).bound_for(cnn) == 0.5
        and GuidedLoss(guidance_bound=None).bound_for(vit) is None
    )
    with pytest.raises(InputError, match="guidance_bound"):
        GuidedLoss(guidance_bound="always")
    assert guidance_options(vit) == {"epsilon": GUIDANCE_TRANSFORMER_EPSILON}
    assert guidance_options(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())) == {}
    # the default relevance function explains a transformer with the smooth epsilon: the same as asking
    # for it by name, not the same as attnlrp's own 1e-6
    x = torch.randn(2, 1, 16, 16)
    y = torch.tensor([0, 1])
    r_default, _ = lrp_relevance()(vit, x, y, logit_difference)
    r_named, _ = lrp_relevance("attnlrp", epsilon=GUIDANCE_TRANSFORMER_EPSILON)(vit, x, y, logit_difference)
    r_plain, _ = lrp_relevance("attnlrp")(vit, x, y, logit_difference)
    assert torch.equal(r_default, r_named) and not torch.allclose(r_default, r_plain)
    assert resolve_composite(vit, "attnlrp", epsilon=GUIDANCE_TRANSFORMER_EPSILON).options()


def test_cli_guided_checkpoint_records_the_bound(tmp_path):
    from medlrp.cli import main as cli_main

    assert cli_main(["phantom", "--out", str(tmp_path / "ph"), "--n", "12", "--size", "16"]) == 0
    out = tmp_path / "m.pt"
    args = ["train", "--data", str(tmp_path / "ph"), "--epochs", "1", "--batch-size", "4", "--quiet"]
    vit = ["--arch", "vit2d", "--arch-option", "patch_size=8", "--arch-option", "depth=1"]
    assert cli_main([*args, "--out", str(out), "--guided", *vit]) == 0
    extra = torch.load(out, weights_only=True)["extra"]
    assert extra["guidance_bound"] == "auto"
    assert all("guidance_grad_ratio" in e for e in extra["history"])  # the ViT's term was bounded


def _worker(kernel: str, *runs: str) -> dict:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if kernel != "native":
        env["ATEN_CPU_CAPABILITY"] = kernel
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    worker = Path(__file__).with_name("guided_vit_worker.py")
    cmd = [sys.executable, str(worker), *runs]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_guided_vit_outcome_does_not_depend_on_the_cpu_kernels():
    """The tiny ViT with the recipe's defaults (bounded guidance gradient, epsilon 0.1) under torch's
    portable, AVX2 and the machine's own kernels: the same outcome, not one of two basins. Unbounded with
    attnlrp's epsilon 1e-6 the outside share was 0.09 / 0.26 / 0.38 under the three (measured, issue 18);
    with the recipe 0.475 / 0.473 / 0.468."""
    results = {k: _worker(k, "plain", "both") for k in ("default", "avx2", "native")}
    outside = []
    for kernel, r in results.items():
        plain, both = r["plain"], r["both"]
        assert plain["accuracy"] == 1.0 and plain["shuffled"] < 0.3, kernel  # plain follows the token
        assert both["accuracy"] > 0.9 and both["shuffled"] > 0.85, kernel  # guided does not
        assert both["outside"] < 0.75 * plain["outside"], kernel
        outside.append(both["outside"])
    assert max(outside) - min(outside) < 0.05
