"""LRP speed and memory: medlrp vs zennit 0.5.1, relative to a plain forward+backward, same process.

    .venv/bin/python benchmarks/lrp_speed.py              # VGG16 and ResNet50, batch 4, 224 px, CPU
    .venv/bin/python benchmarks/lrp_speed.py --quick      # batch 2, 96 px: a fast check
    .venv/bin/python benchmarks/lrp_speed.py --no-memory  # times only

Time: the median of ``--reps`` rounds; in each round every contender runs once, in turn, so load
changes on the machine hit all of them alike. The baseline is a plain forward and a backward to the
input (parameters not requiring grad), on the same model and batch. zennit runs with its canonizers
(VGGCanonizer / ResNetCanonizer) and ``attr_output = one_hot * out``, like medlrp's start.

Memory: each contender runs once in a fresh subprocess; the figure is the peak resident set size
during the run (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` right before the run) minus
the resident set size just before it (model and input loaded).
torch allocates on the CPU through the C allocator, which tracemalloc cannot see; RSS does. The
subprocesses run with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc): blocks of 64 KB and more are mapped
and unmapped on their own, so freed tensors leave the resident set at once and the peak is the peak
of live tensors. Without it the figure depends on how the heap happened to fragment (plain VGG16
measured 356-469 MB over five runs; with it 309 MB every time).
Writes benchmarks/results/lrp_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

import medlrp
from timing import MALLOC_ENV, interleaved, peak_memory

RESULTS = Path(__file__).resolve().parent / "results"
COMPOSITES = ["epsilon", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1"]
FLOORS = {"epsilon": 1.0, "epsilon-plus-flat": 1.5, "epsilon-gamma-box": 2.0, "epsilon-alpha2-beta1": 2.0}


def build(arch: str, size: int, batch: int):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target


def zennit_composite(name: str, arch: str, x: torch.Tensor):
    from zennit.composites import (
        EpsilonAlpha2Beta1,
        EpsilonGammaBox,
        EpsilonPlusFlat,
        LayerMapComposite,
        layer_map_base,
    )
    from zennit.rules import Epsilon
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Convolution

    canonizers = [ResNetCanonizer() if arch.startswith("resnet") else VGGCanonizer()]
    if name == "epsilon":
        return LayerMapComposite(
            layer_map_base() + [(Convolution, Epsilon()), (torch.nn.Linear, Epsilon())], canonizers=canonizers
        )
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    if name == "epsilon-gamma-box":
        low = x.amin((1, 2, 3), keepdim=True).expand_as(x)
        high = x.amax((1, 2, 3), keepdim=True).expand_as(x)
        return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    return EpsilonAlpha2Beta1(canonizers=canonizers)


def contender(kind: str, name: str, arch: str, model, x, target):
    """A no-argument callable running one contender once."""
    if kind == "plain":

        def plain():
            leaf = x.detach().requires_grad_(True)
            out = model(leaf)
            (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), leaf)
            return grad

        return plain
    if kind == "medlrp":
        lrp = medlrp.LRP(model, name)
        return lambda: lrp.relevance(x, target)
    from zennit.attribution import Gradient

    composite = zennit_composite(name, arch, x)
    one_hot = torch.nn.functional.one_hot(target, 1000).to(x)

    def run_zennit():
        with Gradient(model=model, composite=composite) as attributor:
            return attributor(x, attr_output=lambda out: one_hot * out)[1]

    return run_zennit


def contenders(with_zennit: bool) -> list[tuple[str, str]]:
    out = [("plain", "")]
    for name in COMPOSITES:
        out.append(("medlrp", name))
        if with_zennit:
            out.append(("zennit", name))
    return out


def time_all(
    arch: str, size: int, batch: int, reps: int, with_zennit: bool, clock=time.perf_counter
) -> dict[str, float]:
    model, x, target = build(arch, size, batch)
    runs = {f"{k}:{n}": contender(k, n, arch, model, x, target) for k, n in contenders(with_zennit)}
    return interleaved(runs, reps, clock)


def memory_one(arch: str, size: int, batch: int, key: str) -> float:
    """Run one contender once in this (fresh) process: peak RSS growth in MB."""
    kind, name = key.split(":")
    model, x, target = build(arch, size, batch)
    fn = contender(kind, name, arch, model, x, target)
    return peak_memory(fn, "cpu") / 1e6  # the high-water mark is reset: model building does not count


def memory_all(arch: str, size: int, batch: int, with_zennit: bool) -> dict[str, float]:
    out = {}
    for kind, name in contenders(with_zennit):
        key = f"{kind}:{name}"
        cmd = [sys.executable, __file__, "--one", arch, str(size), str(batch), key]
        env = {**os.environ, **MALLOC_ENV}
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[key] = float(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, 96 px")
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-zennit", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time (steadier than wall time on a shared machine; use --threads 1)",
    )
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        arch, size, batch, key = args.one
        print(memory_one(arch, int(size), int(batch), key))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    size, batch = (96, 2) if args.quick else (224, 4)
    with_zennit = not args.no_zennit
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "size": size,
        "batch": batch,
        "reps": args.reps,
        "clock": args.clock,
        "models": {},
    }
    header = (
        f"{'model':9} {'composite':22} {'floor':>5} {'medlrp':>7} {'zennit':>7} "
        f"{'mem medlrp':>10} {'mem zennit':>10}"
    )
    print(header)
    for arch in args.models.split(","):
        times = time_all(arch, size, batch, args.reps, with_zennit, clock)
        mem = {} if args.no_memory else memory_all(arch, size, batch, with_zennit)
        base, base_mem = times["plain:"], mem.get("plain:")
        rows = {}
        for name in COMPOSITES:
            row = {
                "floor": FLOORS[name],
                "medlrp_s": times[f"medlrp:{name}"],
                "plain_s": base,
                "medlrp_x": times[f"medlrp:{name}"] / base,
            }
            if with_zennit:
                row["zennit_s"] = times[f"zennit:{name}"]
                row["zennit_x"] = row["zennit_s"] / base
            if base_mem:
                row["medlrp_mem_x"] = mem[f"medlrp:{name}"] / base_mem
                if with_zennit:
                    row["zennit_mem_x"] = mem[f"zennit:{name}"] / base_mem
            rows[name] = row
            print(
                f"{arch:9} {name:22} {row['floor']:5.1f} {row['medlrp_x']:6.2f}x "
                f"{row.get('zennit_x', float('nan')):6.2f}x {row.get('medlrp_mem_x', float('nan')):9.2f}x "
                f"{row.get('zennit_mem_x', float('nan')):9.2f}x"
            )
        report["models"][arch] = {
            "plain_s": base,
            "plain_mem_mb": base_mem,
            "memory_mb": mem,
            "composites": rows,
        }
        print(f"{arch:9} plain forward+backward {base:.3f} s" + (f", {base_mem:.0f} MB" if base_mem else ""))
    RESULTS.mkdir(exist_ok=True)
    name = "lrp_speed_quick.json" if args.quick else "lrp_speed.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
