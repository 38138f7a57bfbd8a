"""Where is the relevance of a shortcut model and of a right model, relative to the tumour mask?

Trains ``cnn2d`` plainly on the confounded (a) and on the unconfounded (c) glioma 2D phantom (same seed
and budget), then for several LRP composites (relevance of the logit difference, test split) reports the
median share of absolute relevance outside the tumour mask (grown by 0, 6, 10, 16 pixels) and in the
token corner, the share outside the head (the region that may matter: ``--mask-kind head`` of
guided_training.py), and the signed relevance inside the mask over the explained logit difference. An
explanation loss can only steer a model away from a shortcut if it scores the right model better than
the shortcut model.

    .venv/bin/python benchmarks/guided_diagnostics.py     # writes benchmarks/results/guided_diagnostics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import medlrp
from guided_training import fixed_scale, phantom  # benchmarks/ is the script's folder
from medlrp.models.preprocessing import Preprocessing
from medlrp.train import TrainConfig, accuracy, build_model, fit
from medlrp.train.guided import grow_mask, logit_difference

RESULTS = Path(__file__).with_name("results")


def shares(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    head: torch.Tensor,
    comp: str,
) -> dict:
    r, out, _ = medlrp.LRP(model, comp, start="logit-difference").attribute(x, y)
    r, d = r.detach(), logit_difference(out, y).sum(1).detach()
    total = r.abs().flatten(1).sum(1)
    token = torch.zeros_like(mask[:1])
    edge = max(4, round(x.shape[-1] * 0.16)) + max(1, round(x.shape[-1] * 0.03))
    token[..., :edge, :edge] = 1
    row = {
        f"abs_outside_margin{m}": float(
            ((r.abs() * (1 - grow_mask(mask, m))).flatten(1).sum(1) / total).median()
        )
        for m in (0, 6, 10, 16)
    }
    row["abs_outside_head"] = float(((r.abs() * (1 - head)).flatten(1).sum(1) / total).median())
    row["abs_in_token_corner"] = float(((r.abs() * token).flatten(1).sum(1) / total).median())
    row["signed_inside_over_logit"] = float(((r * mask).flatten(1).sum(1) / d).median())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--normalise",
        choices=("fixed", "image"),
        default="fixed",
        help="fixed: one intensity map for the data set (as guided_training.py); image: each image z-scored",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "guided_diagnostics.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scale = fixed_scale(args.n, args.seed, 64) if args.normalise == "fixed" else None
    data = {
        "a": phantom(True, args.n, args.seed, 64, scale=scale),
        "c": phantom(False, args.n, args.seed, 64, scale=scale),
    }
    test = data["a"]["test"]
    head = phantom(True, args.n, args.seed, 64, mask_kind="head", scale=scale)["test"].mask
    results: dict = {}
    for name, d in data.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model, _ = build_model("cnn2d", Preprocessing(size=[64, 64]), 2)
        fit(model, d["train"], TrainConfig(epochs=args.epochs, batch_size=32, seed=args.seed))
        model.eval()
        results[name] = {"test_accuracy": accuracy(model, test)}
        for comp in ("epsilon", "epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box"):
            results[name][comp] = shares(model, test.x, test.label, test.mask, head, comp)
        print(name, json.dumps(results[name], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": {**vars(args), "out": str(args.out)}, "results": results}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
