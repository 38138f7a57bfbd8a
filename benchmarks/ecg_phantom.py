"""LRP on the 12-lead ECG phantom: where the relevance lies, sample flipping, and LSTM LRP speed.

    .venv/bin/python benchmarks/ecg_phantom.py            # n=200 records of 5 s, a few minutes on 2 cores
    .venv/bin/python benchmarks/ecg_phantom.py --quick    # n=60, fewer epochs: a smoke run
    .venv/bin/python benchmarks/ecg_phantom.py --speed-only --reps 15   # part 4 only

1. Trains ``cnn1d`` and ``lstm1d`` on the ECG phantom (``medlrp phantom --kind ecg``, unconfounded: the
   class is the ST elevation in V1-V3), in memory, with the checkpoint's preprocessing (z-score).
2. On the test cases of class ``st_elevation`` (the class explained), the share of the relevance on
   the class-defining segments (the masks: ST segments of V1-V3, about 5% of the samples): LRP
   (``epsilon-plus-flat`` for cnn1d, ``epsilon`` for lstm1d: the defaults) and Grad-CAM (positive
   part), the gradient (``|grad|``, the saliency convention).
3. Sample flipping on the same cases: samples replaced by 0 (the mean after z-scoring) in LRP's
   order (most relevant first) and in a random order, 2% of the samples per step; the logit after 2%,
   4%, 10%, 20% of the samples, relative to the unperturbed logit, and the area over the curve up to
   20% (AOPC: mean drop over the first ten steps, relative to the unperturbed logit).
4. LSTM LRP time against a plain forward+backward to the input (parameters not requiring grad), one
   thread, batch 16, 12 leads x 1000 samples: an ``nn.LSTM`` (hidden 32) over all 1000 samples with a
   linear head on its last output, the registered ``lstm1d``, and the first with an ``nn.GRU``.
   Median of ``--reps`` rounds, each contender once per round in turn.
Writes benchmarks/results/ecg_phantom.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import medlrp
from medlrp.data.phantom import PhantomSpec, iter_cases
from medlrp.metrics import pixel_flipping, relevance_mass_accuracy
from medlrp.models import Preprocessing
from medlrp.registry import ARCHITECTURES

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (1, 2, 5, 10)  # flipping steps reported (2% of the samples each)


def load(n: int, samples: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    pre = Preprocessing(dims=1, channels=12, size=[samples])
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, _, case in iter_cases(PhantomSpec(kind="ecg", n=n, seed=seed, size=samples)):
        parts[split].append((pre(case.image), case.label, torch.as_tensor(case.mask, dtype=torch.float32)))
    return {
        split: (
            torch.stack([c[0] for c in cs]),
            torch.tensor([c[1] for c in cs]),
            torch.stack([c[2] for c in cs]),
        )
        for split, cs in parts.items()
    }


def train(arch: str, data, epochs: int, seed: int) -> tuple[torch.nn.Module, float, float]:
    torch.manual_seed(seed)
    model = ARCHITECTURES.get(arch)(in_channels=12, num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y, _ = data["train"]
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xt, yt, _ = data["test"]
        acc = float((model(xt).argmax(1) == yt).float().mean())
    return model, acc, time.perf_counter() - start


def attributions(model: torch.nn.Module, x: torch.Tensor, target: int) -> dict[str, torch.Tensor]:
    out = {}
    for method in ("lrp", "gradcam", "gradient"):
        r = torch.cat(
            [
                medlrp.explain(model, x[i : i + 8], target=target, method=method).relevance
                for i in range(0, len(x), 8)
            ]
        )
        out[method] = r.abs() if method == "gradient" else r.clamp(min=0)
        if method == "lrp":
            out["lrp (signed, for flipping)"] = r
    return out


def localisation(model, data) -> dict[str, float]:
    x, y, mask = data["test"]
    keep = y == 1
    maps = attributions(model, x[keep], 1)
    result = {}
    for method in ("lrp", "gradcam", "gradient"):
        r = maps[method].expand_as(x[keep])  # Grad-CAM: one map over time for every lead
        result[method] = float(relevance_mass_accuracy(r, mask[keep]).nanmean())
    result["mask_fraction"] = float(mask[keep].mean())
    flips = {}
    step = x[0].numel() // 50  # 2% of the samples (all leads) per step
    for order in ("morf", "random"):
        curve = pixel_flipping(
            model,
            x[keep],
            maps["lrp (signed, for flipping)"],
            1,
            features_per_step=step,
            order=order,
            softmax=False,
        )
        rel = curve / curve[:, :1]  # the logit relative to the unperturbed one
        flips[order] = {f"{2 * k}%": float(rel[:, k].mean()) for k in STEPS}
        flips[order]["aopc_20%"] = float(
            (curve[:, :1] - curve[:, 1:11]).mean(1).div(curve[:, 0].abs()).mean()
        )
    result["flipping"] = flips
    return result


class LastStep(torch.nn.Module):
    def __init__(self, cell: type[torch.nn.Module] = torch.nn.LSTM) -> None:
        super().__init__()
        self.lstm = cell(12, 32, batch_first=True)
        self.head = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.transpose(1, 2))
        return self.head(out[:, -1])


def speed(reps: int) -> dict[str, dict[str, float]]:
    torch.set_num_threads(1)
    x = torch.randn(16, 12, 1000, generator=torch.Generator().manual_seed(0))
    results = {}
    torch.manual_seed(0)
    for name, model in (
        ("nn.LSTM over 1000 samples", LastStep()),
        ("lstm1d (pool 4)", ARCHITECTURES.get("lstm1d")()),
        ("nn.GRU over 1000 samples", LastStep(torch.nn.GRU)),
    ):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        lrp = medlrp.LRP(model)

        def plain(model: torch.nn.Module = model) -> None:
            xi = x.clone().requires_grad_(True)
            model(xi)[:, 0].sum().backward()

        def ours(lrp: medlrp.LRP = lrp) -> None:
            lrp.relevance(x, 0)

        times: dict[str, list[float]] = {"plain": [], "lrp": []}
        plain(), ours()
        for _ in range(reps):
            for key, fn in (("plain", plain), ("lrp", ours)):
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
        p, r = statistics.median(times["plain"]), statistics.median(times["lrp"])
        results[name] = {"plain_s": p, "lrp_s": r, "ratio": r / p}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--samples", type=int, default=500, help="samples per record (100 Hz)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--speed-only", action="store_true", help="only part 4 (benchmarks/results/ecg_speed.json)"
    )
    args = parser.parse_args()
    if args.speed_only:
        result = speed(args.reps)
        print(json.dumps(result, indent=1))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ecg_speed.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    n = args.n or (60 if args.quick else 200)
    epochs = args.epochs or (2 if args.quick else 15)
    torch.set_num_threads(2)
    data = load(n, args.samples, args.seed)
    report: dict = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, torch {torch.__version__}",
        "n": n,
        "samples": args.samples,
        "epochs": epochs,
        "models": {},
    }
    for arch in ("cnn1d", "lstm1d"):
        model, acc, seconds = train(arch, data, epochs, args.seed)
        torch.set_num_threads(2)
        report["models"][arch] = {"test_accuracy": acc, "train_s": seconds, **localisation(model, data)}
        print(arch, json.dumps(report["models"][arch], indent=1))
    report["speed"] = speed(args.reps)
    print(json.dumps(report["speed"], indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ecg_phantom.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
