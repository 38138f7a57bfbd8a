"""Speed of LRP for Vision Transformers: medlrp's cp-lrp / attnlrp against LXT 2.1's CP-LRP, one process.

Model: torchvision ``vit_b_16`` (random weights, eval), batch 2, 3x224x224, float32, CPU.

Baseline (the "1.0x"): a plain forward+backward of the same model and batch, the target logits' sum
backpropagated to every parameter and to the input (what training costs). An LRP backward needs only
the input gradient, so it can be below 1. A second baseline, "input-grad", backpropagates to the input
only (parameters frozen), for reference.

LXT patches ``torch.nn`` classes (``LayerNorm``, ``GELU``, ``MultiheadAttention``) for the whole
process. To measure it in the same process, interleaved with the others, its patch is applied just
before each LXT call and the classes' original attributes are put back right after (nothing else of
LXT's is global). Every contender is warmed up once; timings are interleaved round by round and the
median is reported.

    .venv/bin/python benchmarks/vit_speed.py [--repeats 5] [--size 224] [--batch 2] [--threads N]
        [--clock wall|cpu] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import platform
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision

import medlrp
from timing import interleaved

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"


def lxt_cp_map() -> dict:
    """LXT's ``vit_torch.cp_LRP`` patch map without running ``lxt``'s package init (it imports LLMs)."""
    spec = importlib.util.find_spec("lxt")
    assert spec is not None and spec.submodule_search_locations
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


@contextlib.contextmanager
def lxt_patched(patch_map: dict) -> Iterator[None]:
    """Apply LXT's class patches, and put every patched class attribute back afterwards."""
    saved = {
        cls: {k: cls.__dict__[k] for k in ("forward", "original_forward") if k in cls.__dict__}
        for cls in patch_map
    }
    try:
        for cls, patch in patch_map.items():
            if not patch(cls):
                raise RuntimeError(f"LXT could not patch {cls.__name__}")
        yield
    finally:
        for cls, attrs in saved.items():
            for k in ("forward", "original_forward"):
                if k in attrs:
                    setattr(cls, k, attrs[k])
                elif k in cls.__dict__:
                    delattr(cls, k)


def lxt_relevance(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, patch_map: dict
) -> torch.Tensor:
    """LXT's relevance (input times gradient of the target logits) under its patches, undone after."""
    with lxt_patched(patch_map):
        xx = x.clone().requires_grad_()
        out = model(xx)
        (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xx)
        return (xx * g).detach()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or the process's CPU time (steadier on a shared machine)",
    )
    p.add_argument("--quick", action="store_true", help="112 px, 2 repeats: a fast check")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.size, a.repeats = 112, 2

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=a.size).eval()
    with torch.no_grad():  # torchvision zero-initialises the head
        model.heads.head.weight.normal_(0.0, 0.02)
    x = torch.randn(a.batch, 3, a.size, a.size)
    target = torch.arange(a.batch)
    params = list(model.parameters())
    lxt_map = lxt_cp_map()

    def plain() -> None:
        xx = x.clone().requires_grad_()
        out = model(xx)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), [xx, *params])

    def input_grad() -> None:
        xx = x.clone().requires_grad_()
        out = model(xx)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xx)

    explainers = {
        "medlrp cp-lrp": medlrp.LRP(model, "cp-lrp"),
        "medlrp attnlrp (epsilon)": medlrp.LRP(model, "attnlrp"),
        "medlrp attnlrp (gamma)": medlrp.LRP(model, "attnlrp", linear="gamma"),
    }
    fns: dict[str, Callable[[], object]] = {"plain fwd+bwd": plain, "input-grad fwd+bwd": input_grad}
    for name, lrp in explainers.items():
        fns[name] = lambda lrp=lrp: lrp.relevance(x, target)
    fns["LXT 2.1 CP-LRP"] = lambda: lxt_relevance(model, x, target, lxt_map)
    times = interleaved(fns, a.repeats, time.perf_counter if a.clock == "wall" else time.process_time)

    base = times["plain fwd+bwd"]
    rows = []
    print(
        f"vit_b_16, batch {a.batch}, {a.size} px, float32, CPU, {torch.get_num_threads()} threads, "
        f"{a.clock} time, median of {a.repeats}"
    )
    print(f"{'method':28s} {'seconds':>8s} {'x plain':>8s} {'x LXT':>7s}")
    for name, t in times.items():
        row = {"method": name, "seconds": t, "x_plain": t / base, "x_lxt": t / times["LXT 2.1 CP-LRP"]}
        rows.append(row)
        print(f"{name:28s} {t:8.3f} {row['x_plain']:8.2f} {row['x_lxt']:7.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "vit_speed",
        "model": "torchvision vit_b_16",
        "batch": a.batch,
        "size": a.size,
        "repeats": a.repeats,
        "threads": torch.get_num_threads(),
        "clock": a.clock,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": platform.machine(),
        "rows": rows,
    }
    (RESULTS / "vit_speed.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
