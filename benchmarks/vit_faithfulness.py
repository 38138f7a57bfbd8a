"""Faithfulness of ViT explanations: pixel flipping on a tiny ViT trained on phantom images.

A medlrp ``vit2d`` (64x64, 8x8 patches, 4 blocks, width 64) is trained on 2D phantoms
(``medlrp.data.phantom``; default ``--kind tumour``: glioma phantom anatomy with vs without a planted
bright lesion; ``chest`` and ``glioma`` use the phantoms' own classes, which this small ViT did not learn
from 600 cases in the time a benchmark may take; the corner token is independent of the class). On
held-out cases each map is scored by pixel flipping, most relevant pixels first
(``medlrp.metrics.pixel_flipping``: pixels set to 0 in steps of 64, the predicted class's probability
tracked; ``medlrp.metrics.auc`` of the curve, steps spread over [0, 1]). Lower AUC = the map found the
pixels the model really uses.

Contenders: ``attnlrp`` and ``cp-lrp`` (medlrp), attention rollout (Abnar & Zuidema 2020: head-averaged
attention plus identity, row-normalised, multiplied over the blocks), the raw last-block attention of
the class token (head average), Grad-CAM on the last block (``medlrp.explain(method="gradcam")``), and a
random ranking. Token maps are laid on the 8x8 patch grid and upsampled (nearest) to 64x64.

    .venv/bin/python benchmarks/vit_faithfulness.py [--train 600] [--test 64] [--epochs 20]
        [--kind tumour] [--retrain] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import medlrp
from medlrp.data.phantom import chest_case, glioma_case
from medlrp.metrics import auc, pixel_flipping
from medlrp.models.vit import vit2d

RESULTS = Path(__file__).parent / "results"
SIZE = 64


def phantoms(n: int, split: int, kind: str = "tumour", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` balanced 2D phantom cases ``(n, 1, 64, 64)`` and labels; the token is independent of the class.

    ``tumour``: glioma phantom anatomy (drawn without its tumour) with (class 1) or without (class 0) a
    planted bright lesion (a disc of radius 4-7 px, +0.6). ``chest`` / ``glioma``: the phantoms' own
    classes.
    """
    rng = np.random.default_rng([seed, split])
    xs, ys = [], []
    for i in range(n):
        label = i % 2
        token = bool(rng.integers(2))
        if kind == "tumour":
            grade = int(rng.integers(2))
            case = glioma_case((seed, split, i), (SIZE, SIZE), grade, token, with_lesion=False)
            if label:  # plant a bright lesion (radius 4-7 px) somewhere in the central field
                cy, cx = rng.uniform(16, 48, size=2)
                radius = rng.uniform(4, 7)
                yy, xx = np.mgrid[:SIZE, :SIZE]
                disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.float32)
                case.image = case.image + 0.6 * disc
        else:
            draw = chest_case if kind == "chest" else glioma_case
            case = draw((seed, split, i), (SIZE, SIZE), label, token)
        xs.append(torch.from_numpy(case.image))
        ys.append(label)
    return torch.stack(xs)[:, None], torch.tensor(ys)


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> torch.nn.Module:
    """Train a tiny ViT with Adam (batch 16, lr 5e-4) and horizontal flips as augmentation."""
    torch.manual_seed(seed)
    model = vit2d(in_channels=1, num_classes=2, image_size=SIZE, patch_size=8)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 16):
            idx = perm[i : i + 16]
            xb = x[idx]
            if torch.rand(()) < 0.5:
                xb = xb.flip(-1)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"  epoch {epoch + 1}: loss {total / len(x):.3f}")
    return model.eval()


def attention_maps(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention ``(N, heads, T, T)``, read by forward hooks removed right after."""
    maps: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: maps.append(out.detach()))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Softmax)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return maps


def on_grid(cls_row: torch.Tensor, grid: int) -> torch.Tensor:
    """Class-token row over the patch tokens ``(N, T - 1)`` -> ``(N, 1, 64, 64)``."""
    m = cls_row.reshape(-1, 1, grid, grid)
    return F.interpolate(m, size=(SIZE, SIZE), mode="nearest")


def rollout(maps: list[torch.Tensor], grid: int) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020)."""
    result = None
    for a in maps:
        a = a.mean(1)
        a = a + torch.eye(a.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    assert result is not None
    return on_grid(result[:, 0, 1:], grid)


def conservation() -> list[dict]:
    """``sum(relevance) / target logit`` per model family (tests/vit_zoo.py: random weights, float64)."""
    import copy
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    import vit_zoo

    rows = []
    for name in vit_zoo.ZOO:
        model, x = vit_zoo.make(name)
        row: dict = {"model": name}
        for label, m in (("kept", model), ("zeroed", vit_zoo.zero_constants(copy.deepcopy(model)))):
            for comp in ("attnlrp", "cp-lrp"):
                e = medlrp.LRP(m, comp)(x)
                ratio = e.relevance.flatten(1).sum(1) / e.output.gather(1, e.target[:, None])[:, 0]
                row[f"{comp} ({label})"] = [round(float(v), 4) for v in ratio]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--test", type=int, default=64)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--kind", choices=("tumour", "chest", "glioma"), default="tumour")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    RESULTS.mkdir(exist_ok=True)
    ckpt = RESULTS / f"vit_faithfulness_{a.kind}.pt"
    t0 = time.time()
    if ckpt.exists() and not a.retrain:
        model = vit2d(in_channels=1, num_classes=2, image_size=SIZE, patch_size=8)
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        model.eval()
    else:
        print(f"training vit2d on {a.train} {a.kind} phantoms ...")
        xtr, ytr = phantoms(a.train, split=0, kind=a.kind)
        model = train(xtr, ytr, a.epochs)
        torch.save(model.state_dict(), ckpt)
    x, y = phantoms(a.test, split=1, kind=a.kind)
    with torch.no_grad():
        pred = model(x).argmax(1)
    accuracy = float((pred == y).float().mean())
    print(f"test accuracy {accuracy:.3f} on {a.test} held-out cases ({time.time() - t0:.0f} s)")

    grid = SIZE // 8
    maps = {
        "attnlrp": medlrp.LRP(model, "attnlrp").relevance(x, pred),
        "cp-lrp": medlrp.LRP(model, "cp-lrp").relevance(x, pred),
    }
    att = attention_maps(model, x)
    maps["attention rollout"] = rollout(att, grid)
    maps["raw attention (last block)"] = on_grid(att[-1].mean(1)[:, 0, 1:], grid)
    maps["grad-cam (last block)"] = medlrp.explain(
        model, x, pred, method="gradcam", layer="blocks.3"
    ).relevance
    maps["random"] = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        logit = model(x).gather(1, pred[:, None])[:, 0]
    kept = {k: float((maps[k].flatten(1).sum(1) / logit).median()) for k in ("attnlrp", "cp-lrp")}
    print(
        "trained model, biases kept: median sum(relevance) / logit: "
        + ", ".join(f"{k} {v:.3f}" for k, v in kept.items())
    )
    rows = []
    print(f"{'method':28s} {'AUC (MoRF) mean':>16s} {'sem':>7s}   lower is better")
    for name, r in maps.items():
        curves = pixel_flipping(model, x, r, pred, features_per_step=64, baseline=0.0, order="morf")
        scores = auc(curves)
        mean, sem = float(scores.mean()), float(scores.std() / len(scores) ** 0.5)
        rows.append({"method": name, "auc_morf": mean, "sem": sem})
        print(f"{name:28s} {mean:16.4f} {sem:7.4f}")
    out = {
        "benchmark": "vit_faithfulness",
        "kind": a.kind,
        "model": "medlrp vit2d (64 px, patch 8, 4 blocks, width 64)",
        "train_cases": a.train,
        "test_cases": a.test,
        "epochs": a.epochs,
        "test_accuracy": accuracy,
        "flip": "pixel_flipping, 64 pixels per step, baseline 0, predicted class probability",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rows": rows,
        "trained_conservation_median": kept,
    }
    print("\nconservation: sum(relevance) / target logit, 2 samples per model (random weights, float64);")
    print("'zeroed': biases, position embeddings and class tokens set to 0")
    out["conservation"] = conservation()
    for row in out["conservation"]:
        print(f"{row['model']:12s} " + "  ".join(f"{k}: {v}" for k, v in row.items() if k != "model"))
    (RESULTS / "vit_faithfulness.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
