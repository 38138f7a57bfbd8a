"""Speed of pixel flipping and region perturbation: medlrp against Quantus 0.6.0, in one process.

Both compute the same curves (checked here) and both must forward the same perturbed inputs: the floor
is those forward passes alone, timed in the same run over the same inputs in the same batches medlrp
uses. Quantus is warmed up (one call) before timing. Models: a tiny CNN (1x64x64), torchvision's ResNet18
(3x112x112, random weights) and a linear model (1x64x64); batch 16, CPU.

    .venv/bin/python benchmarks/metrics_speed.py [--threads 1] [--repeats 5] [--clock wall|cpu]
        [--cases tiny_cnn,resnet18,linear]

``--clock cpu`` times the process's CPU time instead of wall time: with one thread it counts the work
done, not the time spent waiting for a core, so it is steadier on a shared, loaded machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from medlrp import metrics
from medlrp.metrics._common import resolve_batch_size
from medlrp.metrics._curves import rank_units
from medlrp.metrics.perturbation import patch_ranks

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"


def tiny_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 16, 2),
    ).eval()  # fmt: skip


def resnet18() -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=2).eval()


def linear() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 64, 2)).eval()


CLOCK = time.perf_counter


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def perturbed_inputs(x, rank, counts, baseline=0.0):
    """All perturbed inputs, step-major, as medlrp's engine orders them (built outside the timing)."""
    steps = [torch.where(rank < int(c), torch.full_like(x, baseline), x) for c in counts]
    return torch.stack(steps).reshape(-1, *x.shape[1:])


def floor(model, inputs, target, n):
    """Forward (with softmax and the target's score) of the given inputs in medlrp's batches."""
    per = max(1, resolve_batch_size(None, inputs[:1]) // n) * n  # medlrp's default batching
    t = target.repeat(inputs.shape[0] // n)
    with torch.no_grad():
        for i in range(0, inputs.shape[0], per):
            out = model(inputs[i : i + per]).softmax(-1)
            out.gather(1, t[i : i + per, None])


def bench_case(name, model, shape, pf_step, patch, regions, repeats, quantus):
    torch.manual_seed(0)
    n = 16
    x = torch.randn(n, *shape)
    a = torch.randn(n, *shape)
    with torch.no_grad():
        y = model(x).argmax(-1)
    xn, an, yn = x.numpy(), a.numpy(), y.numpy()
    rows = []

    # Pixel flipping.
    q_pf = quantus.PixelFlipping(
        features_in_step=pf_step, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )

    def run_q_pf():
        return q_pf(model=model, x_batch=xn, y_batch=yn, a_batch=an, device="cpu", softmax=True)

    def run_m_pf():
        return metrics.pixel_flipping(model, x, a, y, features_per_step=pf_step, baseline=0.0)

    total = x[0].numel()
    counts = torch.clamp(torch.arange(-(-total // pf_step) + 1) * pf_step, max=total)
    rank = rank_units(a.reshape(n, -1), "morf").reshape(a.shape)
    inputs = perturbed_inputs(x, rank, counts[1:])  # the perturbed inputs (medlrp also scores x itself)
    rows.append(_measure(name, "pixel_flipping", run_q_pf, run_m_pf, lambda: floor(model, inputs, y, n),
                         lambda q, m: np.abs(np.asarray(q) - m[:, 1:].numpy()).max(), repeats))  # fmt: skip

    # Region perturbation.
    q_rp = quantus.RegionPerturbation(
        patch_size=patch, regions_evaluation=regions, perturb_baseline=0.0, normalise=False, abs=False,
        disable_warnings=True,
    )  # fmt: skip

    def run_q_rp():
        return q_rp(model=model, x_batch=xn, y_batch=yn, a_batch=an, device="cpu", softmax=True)

    def run_m_rp():
        return metrics.region_perturbation(model, x, a, y, patch_size=patch, steps=regions, baseline=0.0)

    prank, _ = patch_ranks(a, [patch] * (x.ndim - 2), "morf")
    inputs_rp = perturbed_inputs(x, prank, torch.arange(regions + 1))  # both score x for the drop

    def diff_rp(q, m):
        return np.abs(np.asarray(q) - (m[:, :1] - m[:, 1:]).numpy()).max()

    rows.append(_measure(name, "region_perturbation", run_q_rp, run_m_rp,
                         lambda: floor(model, inputs_rp, y, n), diff_rp, repeats))  # fmt: skip
    return rows


def _measure(case, metric, run_q, run_m, run_floor, diff, repeats):
    q_out, m_out = run_q(), run_m()  # warm-up (Quantus's first call carries its start-up) + agreement
    err = float(diff(q_out, m_out))
    run_floor()
    # Interleaved, best of ``repeats``: the three see the same machine load (a shared, busy machine).
    times = {"floor": [], "medlrp": [], "quantus": []}
    for _ in range(repeats):
        for key, fn in (("floor", run_floor), ("medlrp", run_m), ("quantus", run_q)):
            times[key].append(timed(fn, 1))
    t_floor, t_m, t_q = (min(times[k]) for k in ("floor", "medlrp", "quantus"))
    row = {
        "case": case, "metric": metric, "medlrp_s": t_m, "quantus_s": t_q, "floor_s": t_floor,
        "medlrp_over_floor": t_m / t_floor, "quantus_over_medlrp": t_q / t_m, "max_abs_diff": err,
    }  # fmt: skip
    print(
        f"{case:9s} {metric:20s} medlrp {t_m * 1e3:8.1f} ms  quantus {t_q * 1e3:8.1f} ms  "
        f"floor {t_floor * 1e3:8.1f} ms  medlrp/floor {t_m / t_floor:5.2f}  "
        f"quantus/medlrp {t_q / t_m:5.1f}x  max|diff| {err:.1e}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both libraries share them)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="tiny_cnn,resnet18,linear")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall or process CPU time")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    import quantus

    cases = {
        # name: (model, input shape, pixel-flipping features per step, patch size, regions)
        "tiny_cnn": (tiny_cnn, (1, 64, 64), 64, 8, 64),
        "resnet18": (resnet18, (3, 112, 112), 3136, 16, 12),
        "linear": (linear, (1, 64, 64), 64, 8, 64),
    }
    rows = []
    for name in args.cases.split(","):
        build, shape, step, patch, regions = cases[name]
        torch.manual_seed(0)
        rows += bench_case(name, build(), shape, step, patch, regions, args.repeats, quantus)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "quantus": quantus.__version__, "threads": args.threads,
            "machine": platform.machine(), "batch": 16, "clock": args.clock}  # fmt: skip
    path = RESULTS / "metrics_speed.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
