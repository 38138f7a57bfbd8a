"""Explanation-guided training against a shortcut: the confounded glioma phantom (2D).

For each architecture (a small residual CNN ``cnn2d`` and a tiny ViT ``vit2d``), with the same
architecture, budget (epochs, batch size, learning rate) and seed:

  (a) plain training on the confounded training split (corner token agrees with the class in 95%),
  (b) guided training (``GuidedLoss``: LRP relevance outside the tumour mask costs) on the same split
      (``--cnn-composite``: the CNN's guidance composite; ``--mask-margin``: grow the masks),
  (c) plain training on the unconfounded training split,

each evaluated on the unconfounded test split (the test split of both datasets is the same): accuracy,
and the relevance mass inside the tumour mask (positive LRP relevance of the true class inside the mask
over all positive relevance, the default composite of the model). Also the time of one training step of
(b) relative to one of (a), same model and batch, interleaved repeats, median.

    .venv/bin/python benchmarks/guided_training.py            # writes benchmarks/results/guided.json
    .venv/bin/python benchmarks/guided_training.py --quick    # a smaller smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import medlrp
from medlrp.data.folder import Batch
from medlrp.data.phantom import PhantomSpec, iter_cases
from medlrp.metrics import relevance_mass_accuracy
from medlrp.models.preprocessing import Preprocessing
from medlrp.train import TrainConfig, accuracy, build_model, fit
from medlrp.train.guided import GuidedLoss
from medlrp.train.losses import cross_entropy_loss

RESULTS = Path(__file__).with_name("results")


def phantom(confounded: bool, n: int, seed: int, size: int) -> dict[str, Batch]:
    """The glioma 2D phantom in memory, split into train/val/test batches (z-scored like a checkpoint)."""
    prep = Preprocessing(dims=2, channels=1, size=[size, size])
    cases: dict[str, list[Any]] = {}
    for split, case_id, case in iter_cases(PhantomSpec("glioma", 2, n, confounded, seed, size)):
        cases.setdefault(split, []).append((case_id, case))
    out = {}
    for split, items in cases.items():
        x = torch.stack([prep(c.image[None]) for _, c in items])
        mask = torch.stack([torch.as_tensor(c.mask[None], dtype=torch.float32) for _, c in items])
        out[split] = Batch(
            x=x,
            label=torch.tensor([c.label for _, c in items]),
            mask=mask,
            has_mask=torch.ones(len(items), dtype=torch.bool),
            case_id=[i for i, _ in items],
        )
    return out


def mass_inside(model: torch.nn.Module, data: Batch, chunk: int = 32) -> float:
    """Mean share of positive relevance (true class, default composite) inside the tumour mask."""
    model.eval()
    lrp = medlrp.LRP(model)
    values = []
    for i in range(0, len(data.label), chunk):
        r = lrp.relevance(data.x[i : i + chunk], data.label[i : i + chunk]).clamp(min=0)
        values.append(relevance_mass_accuracy(r, data.mask[i : i + chunk]))
    v = torch.cat(values)
    return float(v[torch.isfinite(v)].mean())


def train_one(arch: str, data: dict[str, Batch], config: TrainConfig, loss_fn: Any) -> torch.nn.Module:
    prep = Preprocessing(dims=2, channels=1, size=list(data["train"].x.shape[2:]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model, _ = build_model(arch, prep, 2)
    fit(model, data["train"], config, loss_fn=loss_fn)
    return model


def step_ratio(model: torch.nn.Module, batch: Batch, guided: Any, repeats: int) -> dict[str, float]:
    """Median time of a guided and of a plain training step (forward, backward, optimiser step)."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step(loss_fn: Any) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, batch)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step(cross_entropy_loss), step(guided)  # warm-up
    plain, guide = [], []
    for _ in range(repeats):
        plain.append(step(cross_entropy_loss))
        guide.append(step(guided))
    p, g = statistics.median(plain), statistics.median(guide)
    return {"plain_step_s": p, "guided_step_s": g, "guided_over_plain": g / p}


def run(args: argparse.Namespace, save: Any = None) -> dict[str, Any]:
    confounded = phantom(True, args.n, args.seed, args.size)
    clean = phantom(False, args.n, args.seed, args.size)
    test = confounded["test"]  # identical to clean["test"]: token independent of the class
    assert torch.equal(test.x, clean["test"].x)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    results: dict[str, Any] = {}
    for arch in args.archs.split(","):
        composite = args.cnn_composite if arch.startswith("cnn") else None
        guided = GuidedLoss(
            args.guidance_weight,
            composite=composite,
            explain_every=args.explain_every,
            mask_margin=args.mask_margin,
        )
        row: dict[str, Any] = {}
        models = {}
        for name, data, loss_fn in (
            ("a_plain_confounded", confounded, cross_entropy_loss),
            ("b_guided_confounded", confounded, guided.loss_fn()),
            ("c_plain_clean", clean, cross_entropy_loss),
        ):
            t0 = time.perf_counter()
            model = train_one(arch, data, config, loss_fn)
            models[name] = model
            row[name] = {
                "test_accuracy": accuracy(model, test),
                "mass_inside_mask": mass_inside(model, test),
                "train_seconds": time.perf_counter() - t0,
            }
            print(f"{arch} {name}: {row[name]}", flush=True)
        a, b, c = (row[k]["test_accuracy"] for k in models)
        gap = c - a
        row["shortcut_gap_points"] = 100 * gap
        row["gap_recovered"] = (b - a) / gap if gap > 0 else float("nan")
        batch = Batch(*(t[: args.batch_size] for t in confounded["train"][:4]), confounded["train"].case_id)
        row["step_time"] = step_ratio(models["a_plain_confounded"], batch, guided.loss_fn(), args.repeats)
        results[arch] = row
        if save is not None:
            save(results)  # partial results survive an interrupted run
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cnn2d,vit2d")
    parser.add_argument("--n", type=int, default=600, help="phantom cases (60%% train, 20%% val, 20%% test)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--guidance-weight", type=float, default=1.0)
    parser.add_argument("--explain-every", type=int, default=4)
    parser.add_argument("--cnn-composite", default=None, help="CNN guidance composite (default: engine's)")
    parser.add_argument("--mask-margin", type=int, default=0, help="grow the tumour masks (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="n=120, 3 epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "guided.json")
    args = parser.parse_args()
    if args.quick:
        args.n, args.epochs, args.repeats = 120, 3, 3
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    info: dict[str, Any] = {
        "command": "python benchmarks/guided_training.py" + (" --quick" if args.quick else ""),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }

    def save(results: dict[str, Any]) -> None:
        info.update(total_seconds=time.perf_counter() - t0, results=results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=2) + "\n")

    results = run(args, save)
    print(f"\n{'arch':8} {'run':22} {'test acc':>8} {'mass in':>8}")
    for arch, row in results.items():
        for name in ("a_plain_confounded", "b_guided_confounded", "c_plain_clean"):
            print(
                f"{arch:8} {name:22} {row[name]['test_accuracy']:8.3f} {row[name]['mass_inside_mask']:8.3f}"
            )
        st = row["step_time"]
        print(
            f"{arch:8} gap {row['shortcut_gap_points']:.1f} points, recovered {row['gap_recovered']:.2f}, "
            f"guided step {st['guided_over_plain']:.2f}x plain"
        )
    print(f"wrote {args.out} ({info['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
