"""How near the tumour the CAMs and occlusion peak on DenseNet121 trained on the 3D glioma phantom.

Trains the model of ``tests/test_cam_lesion3d.py`` with that test's own fixture (same data, seed and
schedule; one torch thread) and prints, per method and layer, the share of the detected tumour volumes
whose map peaks inside the tumour mask or within 2, 3, 4 voxels of it. Writes
``benchmarks/results/cam_3d_phantom.json``.

    .venv/bin/python benchmarks/cam_3d_phantom.py [--score-cases 4] [--occlusion-cases 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import medlrp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
GRADIENT_CAMS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam")
LAYERS = (
    "features.denseblock1.denselayer6.layers.relu2",
    "features.transition1.relu",
    "features.denseblock1",
)


def load_test_module():  # noqa: ANN201 - a module object
    """The test module, imported by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cam_lesion3d", ROOT / "tests" / "test_cam_lesion3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--score-cases", type=int, default=4, help="cases explained with Score-CAM")
    parser.add_argument("--occlusion-cases", type=int, default=8, help="cases explained with occlusion")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t = load_test_module()
    t0 = time.perf_counter()
    model, accuracy, x, masks = t.trained._get_wrapped_function()()
    train_s = time.perf_counter() - t0
    print(f"test accuracy {accuracy:.3f}, {len(x)} detected tumour volumes, training {train_s:.0f} s")
    edt = [ndimage.distance_transform_edt(1 - m) for m in masks]
    chance = float(np.mean([(d <= 4).mean() for d in edt]))
    print(f"a random voxel within 4 voxels of the tumour: {chance:.3f}")
    rows = []

    def report(method: str, layer: str, e: medlrp.Explanation, n: int, seconds: float) -> None:
        d = t.distances_to_tumour(e.relevance, masks[:n])
        row = {"method": method, "layer": layer, "cases": n, "seconds": seconds}
        row |= {"inside": float(np.mean(d == 0))} | {f"le{k}": float(np.mean(d <= k)) for k in (2, 3, 4)}
        if method == "occlusion":
            row["window_overlaps"] = float(np.mean(t.distances_to_tumour(e.relevance, masks[:n], True) == 0))
        rows.append(row)
        shares = " ".join(f"{row[k]:6.2f}" for k in ("inside", "le2", "le3", "le4"))
        print(f"{method:10} {layer:46} {n:3} {shares} {seconds:7.1f}", flush=True)

    print(f"{'method':10} {'layer':46} {'n':>3} {'inside':>6} {'<=2':>6} {'<=3':>6} {'<=4':>6} {'s':>7}")
    for layer in LAYERS:
        for method in GRADIENT_CAMS:
            t1 = time.perf_counter()
            e = medlrp.explain(model, x, 1, method=method, layer=layer)
            report(method, layer, e, len(x), time.perf_counter() - t1)
    n = min(args.score_cases, len(x))
    t1 = time.perf_counter()
    e = medlrp.explain(model, x[:n], 1, method="scorecam", layer=t.LAYER)
    report("scorecam", t.LAYER, e, n, time.perf_counter() - t1)
    n = min(args.occlusion_cases, len(x))
    t1 = time.perf_counter()
    e = medlrp.explain(model, x[:n], 1, method="occlusion", window=8, stride=8)
    report("occlusion", "window 8, stride 8", e, n, time.perf_counter() - t1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"accuracy": accuracy, "cases": len(x), "train_seconds": train_s, "chance_le4": chance}
    (RESULTS / "cam_3d_phantom.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
