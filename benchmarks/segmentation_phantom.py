"""Where a 3D U-Net's tumour segmentation comes from: LRP against Grad-CAM on the glioma phantom.

End to end on the command line: ``medlrp phantom --kind glioma --dims 3`` writes the data,
``medlrp train --task segmentation --arch unet3d`` trains the U-Net, and ``medlrp explain --region predicted
--target tumour`` explains the test volumes (the tumour logits summed over the predicted tumour) with LRP
(several composites) and Grad-CAM (its default layer for a segmentation network, the bottleneck). Grad-CAM
is also run at the last decoder block and at the 1x1 head (the logits) with ``--layer``. For each map: the
share of the positive relevance inside the true tumour and inside the tumour grown by a margin (2
voxels), averaged over the test volumes, and the same inside the predicted region (``results.json``'s
``region_metrics``), and the Pearson correlation of the map with the explained class's logit map (near 1:
the map repeats the output). Writes ``benchmarks/results/segmentation_phantom.json``.

    .venv/bin/python benchmarks/segmentation_phantom.py [--n 80] [--epochs 25] [--size 32] [--margin 2]
    .venv/bin/python benchmarks/segmentation_phantom.py --work DIR --reuse  # data and model kept in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's medlrp, as the command-line runs below
RESULTS = Path(__file__).parent / "results"
COMPOSITES = ("epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1-flat", "epsilon")
LAYERS = ("decoders.2", "head")  # the last decoder block (depth 3) and the 1x1 head: the logits


def medlrp(*args: str) -> tuple[int, float]:
    """Run ``medlrp ARGS`` with this checkout's sources; return the exit code and the CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    before = os.times()
    done = subprocess.run([sys.executable, "-m", "medlrp", *args], env=env, capture_output=True, text=True)
    after = os.times()
    if done.returncode not in (0, 2):
        sys.exit(f"medlrp {' '.join(args)} failed:\n{done.stderr}")
    for line in done.stderr.splitlines():
        if line.startswith("medlrp: error"):
            print("  " + line)
    return done.returncode, (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` grown by a Euclidean ball of ``voxels`` (as the region metrics grow it)."""
    from medlrp.metrics.localisation import _dilate

    return _dilate(torch.as_tensor(mask > 0)[None, None], voxels)[0, 0].numpy()


def shares(relevance: np.ndarray, mask: np.ndarray, margin: int) -> tuple[float, float]:
    """Share of the positive relevance inside ``mask`` and inside ``mask`` grown by ``margin``.

    :func:`medlrp.metrics.region_relevance_share`, which ``results.json``'s ``region_metrics`` use too.
    """
    from medlrp.metrics import region_relevance_share

    r = torch.as_tensor(relevance, dtype=torch.float64)[None, None]
    m = torch.as_tensor(mask > 0)[None, None]
    return tuple(float(region_relevance_share(r, m, margin=k)[0]) for k in (0, margin))  # type: ignore[return-value]


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means over the cases of every numeric entry."""
    if not rows:
        return {"cases": 0}
    keys = [k for k in rows[0] if k != "case"]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys} | {"cases": len(rows)}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the voxels."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-30))


def logit_maps(ckpt: Path, data: Path) -> dict[str, np.ndarray]:
    """The tumour logit map of every test case (model grid = scan grid here), by case name."""
    sys.path.insert(0, str(ROOT / "src"))
    from medlrp.io import read_image
    from medlrp.models import load_model
    from medlrp.pipeline import prepare

    loaded = load_model(ckpt)
    maps = {}
    for path in sorted(data.glob("test/*/*.nii.gz")):
        if not path.name.endswith("_mask.nii.gz"):
            with torch.no_grad():
                maps[path.name[: -len(".nii.gz")]] = loaded.model(prepare(loaded, read_image(path)))[
                    0, 1
                ].numpy()
    return maps


def explain(ckpt: Path, data: Path, out: Path, methods: str, *options: str) -> tuple[float, float]:
    """``medlrp explain`` of the test volumes (predicted tumour); wall and CPU seconds."""
    tic = time.perf_counter()
    folders = [str(p) for p in sorted((data / "test").iterdir()) if p.is_dir()]
    _, cpu = medlrp(
        "explain", "--model", str(ckpt), *folders, "--region", "predicted", "--target", "tumour",
        "--method", methods, "--out", str(out), *options,
    )  # fmt: skip
    return time.perf_counter() - tic, cpu


def layer_of(out: Path, method: str) -> str:
    """The CAM layer an explain run used (its record's options)."""
    return json.loads((out / "results.json").read_text())["cases"][0]["outputs"][method]["options"]["layer"]


def gt_scores(
    out: Path, data: Path, method: str, margin: int, logits: dict[str, np.ndarray]
) -> list[dict[str, float]]:
    """Per case of an explain run: shares inside the true tumour (+ margin) and the predicted region."""
    results = json.loads((out / "results.json").read_text())
    rows = []
    for record in results["cases"]:
        entry = record["outputs"][method]
        relevance = np.asarray(nib.load(out / entry["relevance"]).get_fdata())
        truth = next(data.glob(f"test/*/{record['case']}_mask.nii.gz"))
        inside, near = shares(relevance, np.asarray(nib.load(truth).get_fdata()), margin)
        region = entry["region_metrics"]
        rows.append(
            {
                "tumour": inside,
                "tumour_margin": near,
                "predicted": region["positive_share_region"],
                "predicted_margin": region["positive_share_margin"],
                "corr_logit": correlation(relevance, logits[record["case"]]),
            }
        )
    return rows


def train(args: argparse.Namespace, data: Path, ckpt: Path, timings: dict[str, float]) -> None:
    """Write the phantom and train the U-Net, both from the command line."""
    common = ("--seed", str(args.seed))
    _, timings["phantom_s"] = medlrp(
        "phantom", "--out", str(data), "--kind", "glioma", "--dims", "3", "--n", str(args.n),
        "--size", str(args.size), "--quiet", "--overwrite", *common,
    )  # fmt: skip
    _, timings["train_s"] = medlrp(
        "train", "--task", "segmentation", "--data", str(data), "--arch", "unet3d", "--out", str(ckpt),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--quiet", *common,
    )  # fmt: skip
    print(f"phantom and training: CPU {timings['phantom_s']:.0f} s + {timings['train_s']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=80, help="phantom cases (60/20/20 %% train/val/test)")
    parser.add_argument("--size", type=int, default=32, help="volume edge in voxels")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--margin", type=int, default=2, help="voxels around the tumour that count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="keep the data and model already in --work")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="medlrp-seg-"))
    data, ckpt = work / "data", work / "unet3d.pt"
    timings: dict[str, float] = {}
    if args.reuse and ckpt.is_file():
        print(f"reusing {data} and {ckpt}")
    else:
        train(args, data, ckpt, timings)
    info = torch.load(ckpt, weights_only=True)["extra"]
    print(f"U-Net Dice (mean foreground, argmax): {info['dice']}")
    table: dict[str, dict[str, float]] = {}
    logits = logit_maps(ckpt, data)
    for k, composite in enumerate(COMPOSITES):
        out = work / f"explain-{composite}"
        methods = "lrp,gradcam" if k == 0 else "lrp"
        wall, timings[f"explain_{composite}_s"] = explain(ckpt, data, out, methods, "--composite", composite)
        print(f"explain --composite {composite} ({methods}): {wall:.0f} s wall")
        table[f"lrp {composite}"] = summarise(gt_scores(out, data, "lrp", args.margin, logits))
        if k == 0:
            name = f"gradcam @ {layer_of(out, 'gradcam')} (default layer)"
            table[name] = summarise(gt_scores(out, data, "gradcam", args.margin, logits))
    for layer in LAYERS:
        out = work / f"explain-gradcam-{layer}"
        wall, timings[f"explain_gradcam_{layer}_s"] = explain(ckpt, data, out, "gradcam", "--layer", layer)
        print(f"explain --method gradcam --layer {layer}: {wall:.0f} s wall")
        table[f"gradcam @ {layer_of(out, 'gradcam')}"] = summarise(
            gt_scores(out, data, "gradcam", args.margin, logits)
        )
    chance = []
    for truth in data.glob("test/*/*_mask.nii.gz"):
        mask = np.asarray(nib.load(truth).get_fdata())
        chance.append((float((mask > 0).mean()), float(dilate(mask, args.margin).mean())))
    table["(volume share: a uniform map)"] = {
        "tumour": float(np.mean([c[0] for c in chance])),
        "tumour_margin": float(np.mean([c[1] for c in chance])),
    }
    print(
        f"\nshare of positive relevance (mean over test volumes); margin {args.margin} voxels\n"
        "| map | cases | tumour | tumour + margin | predicted region | predicted + margin "
        "| corr. with logits |\n|---|---|---|---|---|---|---|"
    )
    for name, row in table.items():
        keys = ("tumour", "tumour_margin", "predicted", "predicted_margin", "corr_logit")
        cells = [row.get(k) for k in keys]
        text = " | ".join("" if v is None else f"{v:.3f}" for v in cells)
        print(f"| {name} | {row.get('cases', '')} | {text} |")
    RESULTS.mkdir(exist_ok=True)
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "dice": info["dice"], "table": table}
    (RESULTS / "segmentation_phantom.json").write_text(json.dumps(payload | {"timings": timings}, indent=1))


if __name__ == "__main__":
    main()
