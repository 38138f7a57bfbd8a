"""Batch throughput: cases per second of `medlrp batch` on the glioma phantom, 1 and 2 processes.

    .venv/bin/python benchmarks/batch_throughput.py                  # CPU, 1 and 2 processes
    .venv/bin/python benchmarks/batch_throughput.py --procs 1 --writers 0,1,2   # writer processes
    .venv/bin/python benchmarks/batch_throughput.py --procs 1,2,4,8 --device cuda --n 2000 \
        --workers 4 --writers 4                                      # one GPU per rank

Each run is a fresh `medlrp batch` into an empty folder (``--procs 1``: a plain process; more: under
``python -m torch.distributed.run --standalone --nproc_per_node P``, one GPU per rank with
``--device cuda``). Reported per run: end-to-end wall time (process start, model load, all cases,
merge) and the steady rate (the explain loop alone, summed over ranks). For scale, the same model and
batches in this process: a plain forward+backward and ``medlrp.explain`` alone (no reading, no writing).
Writes benchmarks/results/batch_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import medlrp
from medlrp.batch import list_cases
from medlrp.batch.loader import CaseReader
from medlrp.data.phantom import PhantomSpec, write_phantom
from medlrp.models import Preprocessing, load_model, save_checkpoint
from medlrp.registry import ARCHITECTURES

RESULTS = Path(__file__).resolve().parent / "results"


def make_inputs(root: Path, n: int, size: int) -> tuple[Path, Path]:
    data = root / "data"
    write_phantom(data, PhantomSpec(kind="glioma", dims=2, n=n, seed=0, size=size))
    classes = sorted(p.name for p in (data / "test").iterdir() if p.is_dir())
    torch.manual_seed(0)
    model = ARCHITECTURES.get("cnn2d")(in_channels=1, num_classes=len(classes))
    pre = Preprocessing(dims=2, channels=1, size=[size, size])
    ckpt = save_checkpoint(
        root / "model.pt", model, "cnn2d", {"in_channels": 1, "num_classes": len(classes)}, pre, classes
    )
    return data, ckpt


def in_process_rates(ckpt: Path, data: Path, method: str, batch_size: int, device: str) -> dict[str, float]:
    """Cases/s of a plain forward+backward and of medlrp.explain on the preprocessed batches."""
    loaded = load_model(ckpt, device=device)
    reader = CaseReader(list_cases(data), loaded.preprocessing)
    xs = torch.stack([reader[i].x for i in range(len(reader))]).to(device)
    batches = list(xs.split(batch_size))

    def forward_backward(x: torch.Tensor) -> None:
        x = x.clone().requires_grad_(True)
        out = loaded.model(x)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()

    def explain(x: torch.Tensor) -> None:
        medlrp.explain(loaded.model, x, method=method)

    rates = {}
    for name, fn in (("forward+backward", forward_backward), ("explain", explain)):
        fn(batches[0])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        tic = time.perf_counter()
        for x in batches:
            fn(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates[name] = len(xs) / (time.perf_counter() - tic)
    return rates


def run_batch(
    ckpt: Path, data: Path, out: Path, procs: int, writers: int, args: argparse.Namespace
) -> dict[str, float]:
    """One fresh `medlrp batch` run; wall time and steady rate (sum of the ranks' loop rates)."""
    cli = ["-m", "medlrp.cli", "batch", "--model", str(ckpt), "--data", str(data), "--out", str(out)]
    cli += ["--methods", args.method, "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    cli += ["--writers", str(writers)]
    cli += ["--device", args.device, "--no-progress"]
    if procs == 1:
        command = [sys.executable, *cli]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
        ]
        command += cli
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
    tic = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"batch run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rates = [float(m) for m in re.findall(r"([0-9.]+) cases/s", proc.stderr)]
    done = sum(int(m) for m in re.findall(r"(\d+) done now", proc.stderr))
    return {
        "wall_s": wall,
        "cases": done,
        "end_to_end_cases_per_s": done / wall,
        "steady_cases_per_s": sum(rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="phantom cases (all splits are explained)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--method", default="lrp")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="reader processes per rank")
    parser.add_argument("--writers", default="1", help="comma-separated writer processes per rank")
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, ckpt = make_inputs(root, args.n, args.size)
        base = in_process_rates(
            ckpt, data, args.method, args.batch_size, "cuda" if args.device == "cuda" else "cpu"
        )
        runs = {}
        for procs in (int(p) for p in args.procs.split(",")):
            for writers in (int(w) for w in args.writers.split(",")):
                out = root / f"out{procs}x{writers}"
                runs[f"{procs} proc, {writers} writer"] = run_batch(ckpt, data, out, procs, writers, args)

    machine = f"{platform.machine()} {os.cpu_count()}-core CPU"
    if args.device.startswith("cuda") and torch.cuda.is_available():
        machine += f", {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    print(
        f"batch throughput: glioma phantom {args.size}x{args.size}, {args.n} cases, method {args.method}, "
        f"batch {args.batch_size}, {args.workers} reader(s)/rank, {machine}, torch {torch.__version__}"
    )
    print(f"{'run':<36}{'cases/s':>10}{'wall s':>10}{'vs first':>10}{'vs bare LRP':>13}")
    print(f"{'forward+backward (no I/O)':<36}{base['forward+backward']:>10.1f}")
    print(f"{'medlrp.explain (no I/O)':<36}{base['explain']:>10.1f}")
    first = next(iter(runs.values()))["steady_cases_per_s"]
    for name, r in runs.items():
        ratio = r["steady_cases_per_s"] / first
        # issue 19's goal: a batch run's steady rate at least 80% of the bare LRP rate (per rank)
        r["x_bare_lrp"] = r["steady_cases_per_s"] / (base["explain"] * int(name.split()[0]))
        print(
            f"{f'batch, {name}, steady':<36}{r['steady_cases_per_s']:>10.2f}{'':>10}{ratio:>9.2f}x"
            f"{r['x_bare_lrp']:>12.2f}x"
        )
        print(f"{f'batch, {name}, end to end':<36}{r['end_to_end_cases_per_s']:>10.2f}{r['wall_s']:>10.1f}")
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "args": vars(args),
        "machine": machine,
        "torch": torch.__version__,
        "in_process": base,
        "runs": runs,
    }
    (RESULTS / "batch_throughput.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
