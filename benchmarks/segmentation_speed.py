"""Segmentation LRP speed: MONAI ``UNet`` 3D, one 96^3 volume, CPU, one thread, against forward+backward.

    .venv/bin/python benchmarks/segmentation_speed.py             # 96^3, 5 rounds
    .venv/bin/python benchmarks/segmentation_speed.py --size 48   # a quick check

The network: ``monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=2,
channels=(16, 32, 64, 128), strides=(2, 2, 2), norm=NORM)`` (PReLU, transposed convolutions,
concatenated skips), random weights, eval mode, parameters not requiring grad. The explained quantity is
class 1's logit sum over its predicted region (``region="predicted"``); the baseline is a plain forward
and the backward of that same region sum to the input. Time is CPU time of the process
(``time.process_time``; one torch thread, so it is the work done, insensitive to other processes on a
shared machine); the figure is the median over ``--reps`` rounds, each round running every contender
once in turn (interleaved). Goals (issue 15): ``epsilon`` <= 1.15x, ``epsilon-plus-flat`` <= 1.6x,
``epsilon-gamma-box`` <= 2.2x. Writes benchmarks/results/segmentation_speed_NORM_ACT.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.networks.nets import UNet

import medlrp

RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {"epsilon": 1.15, "epsilon-plus-flat": 1.6, "epsilon-gamma-box": 2.2}


def build(size: int, norm: str, act: str = "prelu") -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The UNet, one volume, and class 1's predicted region."""
    torch.manual_seed(0)
    model = UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), norm=norm, act=act).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    region = (out.argmax(1, keepdim=True) == 1).to(x.dtype)
    return model, x, region


def contenders(
    model: torch.nn.Module, x: torch.Tensor, region: torch.Tensor
) -> dict[str, Callable[[], object]]:
    """Name -> a no-argument callable running it once."""

    def plain() -> torch.Tensor:
        leaf = x.detach().requires_grad_(True)
        out = model(leaf)
        (grad,) = torch.autograd.grad((out[:, 1:2] * region).sum(), leaf)
        return grad

    runs: dict[str, Callable[[], object]] = {"plain": plain}
    for name in GOALS:
        lrp = medlrp.LRP(model, name)
        runs[name] = lambda lrp=lrp: lrp.relevance(x, 1, region="predicted")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--norm", default="batch", help="the UNet's normalisation (MONAI's default: instance)"
    )
    parser.add_argument("--act", default="prelu", help="the UNet's activation (MONAI's default: prelu)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, x, region = build(args.size, args.norm, args.act)
    runs = contenders(model, x, region)
    for fn in runs.values():  # warm-up (allocator, kernels)
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, fn in runs.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    median = {name: statistics.median(v) for name, v in times.items()}
    result = {
        "command": (
            f"benchmarks/segmentation_speed.py --size {args.size} --reps {args.reps} --norm {args.norm} "
            f"--act {args.act}"
        ),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread",
        "input": [1, 1, args.size, args.size, args.size],
        "region_voxels": int(region.sum()),
        "plain_s": median["plain"],
        "composites": {
            name: {"seconds": median[name], "ratio": median[name] / median["plain"], "goal": goal}
            for name, goal in GOALS.items()
        },
        "rounds": times,
    }
    print(f"plain forward+backward: {median['plain']:.3f} s CPU")
    for name, r in result["composites"].items():
        flag = "ok" if r["ratio"] <= r["goal"] else "MISSED"
        print(f"{name:20s} {r['seconds']:.3f} s  {r['ratio']:.2f}x  (goal {r['goal']}x: {flag})")
    RESULTS.mkdir(exist_ok=True)
    name = f"segmentation_speed_{args.norm}_{args.act}.json"
    tmp = RESULTS / (name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(RESULTS / name)


if __name__ == "__main__":
    main()
