"""What a guided training step costs against a plain one: ``GuidedLoss``'s defaults and named recipes.

One process, one thread, one batch of the confounded glioma phantom (the guided benchmark's data and
architectures); the recipes' steps (forward, backward, AdamW step) run in turn, round after round, so that
load and frequency changes fall on all of them alike. Each sample is the mean of ``--block`` consecutive
steps (default: enough steps for one explained case where ``explain_every`` exceeds the batch, e.g. two
for a transformer's every 64th case with batches of 32), so that steps without the LRP term count as often
as they happen in training; the figure is the median of ``--rounds`` samples, in CPU time.

    .venv/bin/python benchmarks/guided_step_cost.py                   # cnn2d and vit2d, 64 px, batch 32
    .venv/bin/python benchmarks/guided_step_cost.py --archs cnn2d --rounds 15 --out cost.json

Recipes: ``defaults`` (``GuidedLoss`` as shipped, with the benchmark's composite), ``session7`` (every
second case referenced, the label on the reference at weight 1, every 32nd case explained),
``unbounded`` (sessions 8-10's CNN default: the LRP term unbounded, every 32nd case explained), ``no-lrp``
(the defaults without the LRP term: what the reference and its label cost alone).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from guided_training import PLAIN, SETTINGS, build, phantom, timed_steps  # benchmarks/ is the script's folder
from medlrp.data.folder import Batch
from medlrp.train.guided import GuidedLoss
from medlrp.train.losses import cross_entropy_loss

RESULTS = Path(__file__).with_name("results")

#: ``GuidedLoss`` arguments of each recipe beyond the benchmark's composite and weight.
RECIPES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "session7": {"reference_every": 2, "counterfactual_weight": 1.0, "explain_every": 32},
    "unbounded": {"guidance_bound": None},
    "no-lrp": {"explain_start": 10**9},
}

LossFn = Callable[[torch.nn.Module, Batch], Any]


def recipe_losses(arch: str, names: list[str]) -> tuple[dict[str, LossFn], int]:
    """The plain loss and each named recipe's ``loss_fn``, and the largest ``explain_every`` among them."""
    s = SETTINGS[arch]
    crits = {n: GuidedLoss(s["weight"], composite=s["composite"], **RECIPES[n]) for n in names}
    model = build(arch, s.get("size", 64), 0, s["arch_kwargs"])
    every = max(c.explain_every_for(model) for c in crits.values())
    return {"plain": cross_entropy_loss, **{n: c.loss_fn() for n, c in crits.items()}}, every


def measure(arch: str, names: list[str], rounds: int, batch_size: int, block: int | None) -> dict[str, Any]:
    """Median CPU time per step of the plain loss and each recipe, and each recipe's ratio to plain."""
    s = SETTINGS[arch]
    size = s.get("size", 64)
    options = replace(PLAIN, dims=s.get("dims", 2))
    data = phantom(True, max(2 * batch_size, 80), 0, size, "head", options=options)["train"]
    batch = Batch(*(t[:batch_size] for t in data[:4]), data.case_id[:batch_size])
    model = build(arch, size, 0, s["arch_kwargs"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    losses, every = recipe_losses(arch, names)
    block = block or max(1, math.ceil(every / batch_size))

    def sample(loss_fn: LossFn) -> float:
        return timed_steps(model, opt, batch, loss_fn, block, clock=time.process_time)

    for fn in losses.values():  # warm-up
        sample(fn)
    times: dict[str, list[float]] = {k: [] for k in losses}
    for _ in range(rounds):
        for k, fn in losses.items():
            times[k].append(sample(fn))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "block": block,
        "step_s": median,
        "over_plain": {k: v / median["plain"] for k, v in median.items() if k != "plain"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cnn2d,vit2d")
    parser.add_argument("--recipes", default="session7,defaults", help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block", type=int, default=None, help="steps per sample (default: see above)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "guided_step_cost.json")
    args = parser.parse_args(argv)
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s): {', '.join(unknown)}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = {}
    for arch in args.archs.split(","):
        results[arch] = measure(arch, names, args.rounds, args.batch_size, args.block)
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in results[arch]["over_plain"].items())
        plain_ms = 1000 * results[arch]["step_s"]["plain"]
        print(f"{arch}: plain {plain_ms:.1f} ms; {ratios} (block {results[arch]['block']})", flush=True)
    out = {
        "command": " ".join(["guided_step_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
        "threads": args.threads,
        "total_seconds": time.perf_counter() - t0,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
