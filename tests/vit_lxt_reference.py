"""Run LXT's CP-LRP on a seeded torchvision ViT in THIS process (LXT patches torch.nn process-wide).

Used by tests/test_vit_lxt.py in a subprocess (so the patching never reaches the test process) and by
benchmarks/vit_speed.py. Usage: ``python tests/vit_lxt_reference.py OUT.pt [--arch vit_b_16] [--size 32]
[--gamma G]`` (``--gamma``: also LXT's gamma recipe, CP-LRP plus zennit's ``Gamma`` on linear layers).
"""

from __future__ import annotations

import argparse
import sys

import torch


def build(arch: str, size: int, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    """The seeded random-weight torchvision ViT both sides explain."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, image_size=size)
    with torch.no_grad():  # torchvision zero-initialises the head: give it weights so logits differ
        model.heads.head.weight.normal_(0.0, 0.05)
        model.heads.head.bias.normal_(0.0, 0.05)
    return model.to(dtype).eval()


def inputs(n: int, size: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Seeded input batch."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(n, 3, size, size, generator=g).to(dtype)


def _lxt_vit_cp_lrp_map() -> dict:
    """LXT's ``vit_torch.cp_LRP`` patch map, imported without running ``lxt``'s package init.

    The package init imports every LLM family of ``transformers`` (10 s); only the ViT map is needed.
    """
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("lxt")
    assert spec is not None and spec.submodule_search_locations, "lxt is not installed"
    root = list(spec.submodule_search_locations)[0]
    for name, sub in (
        ("lxt", ""),
        ("lxt.efficient", "/efficient"),
        ("lxt.efficient.models", "/efficient/models"),
    ):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [root + sub]
            sys.modules[name] = pkg
    return importlib.import_module("lxt.efficient.models.vit_torch").cp_LRP


def _patch_once() -> None:
    """Apply LXT's ViT class patches (idempotent: LXT refuses a second patch of the same class)."""
    if getattr(_patch_once, "done", False):
        return
    for cls, patch in _lxt_vit_cp_lrp_map().items():  # patches nn.LayerNorm / GELU / MultiheadAttention
        if not patch(cls):
            raise RuntimeError(f"LXT could not patch {cls}")
    _patch_once.done = True  # type: ignore[attr-defined]


def lxt_cp_lrp(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LXT 2.1's CP-LRP for torchvision ViTs: relevance = x * grad after patching torch.nn classes."""
    _patch_once()
    x = x.clone().requires_grad_()
    out = model(x)
    sel = out.gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(sel, x)
    return (x * g).detach()


def lxt_cp_lrp_gamma(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, gamma: float
) -> torch.Tensor:
    """LXT 2.1's gamma recipe for ViTs (its ``examples/vit_torch.py``): CP-LRP plus zennit's ``Gamma``.

    zennit's rule goes on every ``nn.Linear`` / ``nn.Conv2d`` module (MLP, head, patch embedding),
    through LXT's ``monkey_patch_zennit`` (zennit's hooks in the gradient-times-input framework). The
    attention projections are not called as modules (``F.multi_head_attention_forward`` reads their
    weights), so they keep the plain gradient.
    """
    import importlib

    import zennit.rules as z_rules
    from zennit.composites import LayerMapComposite

    _patch_once()
    importlib.import_module("lxt.efficient.zennit_patches").monkey_patch_zennit()
    composite = LayerMapComposite(
        [(torch.nn.Conv2d, z_rules.Gamma(gamma)), (torch.nn.Linear, z_rules.Gamma(gamma))]
    )
    composite.register(model)
    try:
        x = x.clone().requires_grad_()
        out = model(x)
        (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
    finally:
        composite.remove()
    return (x * g).detach()


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--arch", default="vit_b_16")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float, default=None, help="also LXT's recipe with zennit's Gamma")
    a = p.parse_args(argv)
    model = build(a.arch, a.size, a.seed, torch.float64)
    x = inputs(a.n, a.size, a.seed, torch.float64)
    target = model(x).argmax(1)
    result = {"relevance": lxt_cp_lrp(model, x, target), "target": target}
    if a.gamma is not None:
        result["relevance_gamma"] = lxt_cp_lrp_gamma(model, x, target, a.gamma)
    torch.save(result, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
