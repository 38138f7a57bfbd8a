"""Speed of the CAMs: medlrp against pytorch-grad-cam 1.5.7 (and Captum's LayerGradCam), in one process.

Gradient CAMs: torchvision ResNet50 (random weights, eval), batch 4, 3x224x224, CPU, layer4 (the same
tensor as pytorch-grad-cam's usual ``layer4[-1]``). Ratios are against a plain forward+backward (the
target logits' sum backpropagated to every parameter). Every contender is warmed up once; timings are
interleaved round by round and the median is reported.

Score-CAM: its floor is one forward pass per channel of the layer through the whole model, in the same
batches (32) that medlrp and pytorch-grad-cam use. By default it is measured on ResNet18's layer4 (512
channels) at 112 px, one image; ``--scorecam-model resnet50`` runs the full case, ResNet50's layer4
(2048 channels) at 224 px, one image (minutes per contender: there the warm-up is one batch of the
floor only, not a whole call of each contender). Score-CAM rows also give this process's CPU time,
which with ``--threads 1`` is the work done and far less disturbed than wall time by other jobs.

    .venv/bin/python benchmarks/cam_speed.py [--repeats 5] [--threads N] [--cams gradcam,...] [--no-scorecam]
        [--scorecam-model resnet18|resnet50]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import warnings
from pathlib import Path

import torch
import torchvision

import medlrp
from timing import interleaved

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"
SCORE_BATCH = 32


def show(row: dict) -> None:
    rel = row.get("x_plain_fwd_bwd", row.get("x_floor"))
    ratio = row["x_pytorch_grad_cam"]
    print(f"{row['case']:42} {row['impl']:22} {row['seconds']:8.3f} {rel:14.2f} {ratio:19.2f}", flush=True)


def gradient_cams(repeats: int, methods: list[str]) -> list[dict]:
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(4, 3, 224, 224)
    target = [1, 2, 3, 4]
    targets = [ClassifierOutputTarget(t) for t in target]

    def plain():
        model(x).gather(1, torch.tensor(target)[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    peers = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM}
    peers["xgradcam"] = XGradCAM
    rows = []
    for method in methods:
        peer_cls = peers[method]
        peer = peer_cls(model=model, target_layers=[model.layer4[-1]])

        def ours(method=method):
            medlrp.explain(model, x, target, method=method, layer="layer4")

        def theirs(peer=peer):
            peer(x, targets)
            model.zero_grad(set_to_none=True)

        fns = {"plain forward+backward": plain, "medlrp": ours, "pytorch-grad-cam": theirs}
        if method == "gradcam":
            captum = LayerGradCam(model, model.layer4)
            fns["captum LayerGradCam"] = lambda captum=captum: captum.attribute(x, torch.tensor(target))
        t = interleaved(fns, repeats)
        peer.activations_and_grads.release()
        base = t["plain forward+backward"]
        for name in fns:
            if name == "plain forward+backward":
                continue
            rows.append(
                row := {
                    "case": f"{method} resnet50 b4 224",
                    "impl": name,
                    "seconds": t[name],
                    "x_plain_fwd_bwd": t[name] / base,
                    "x_pytorch_grad_cam": t[name] / t["pytorch-grad-cam"],
                }
            )
            show(row)
    return rows


#: Score-CAM cases: torchvision model, input size, channels of its layer4.
SCORE_CASES = {"resnet18": (112, 512), "resnet50": (224, 2048)}


def score_cam(repeats: int, arch: str = "resnet18") -> list[dict]:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    size, channels = SCORE_CASES[arch]
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval()
    x = torch.randn(1, 3, size, size)
    # One batch of stand-in masked inputs, reused for every batch of the floor (2048 inputs at 224 px
    # would take 1.2 GB); what the floor measures is the forward passes, not their content.
    masked = torch.rand(SCORE_BATCH, 3, size, size)

    def floor():
        with torch.no_grad():
            for i in range(0, channels, SCORE_BATCH):
                model(masked[: min(SCORE_BATCH, channels - i)])

    def ours():
        medlrp.explain(model, x, 7, method="scorecam", layer="layer4", batch_size=SCORE_BATCH)

    peer = ScoreCAM(model=model, target_layers=[model.layer4])
    peer.batch_size = SCORE_BATCH

    def theirs():
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bars
            peer(x, [ClassifierOutputTarget(7)])

    full = arch == "resnet18"
    if not full:  # a whole warm-up call of each contender would double minutes of runtime
        with torch.no_grad():
            model(masked)
    cpu: dict[str, float] = {}
    fns = {"floor": floor, "medlrp": ours, "pytorch-grad-cam": theirs}
    t = interleaved(fns, repeats, warmup=full, cpu=cpu)
    peer.activations_and_grads.release()
    rows = [
        {
            "case": f"scorecam {arch} layer4 ({channels} ch) b1 {size}",
            "impl": name,
            "seconds": t[name],
            "floor_seconds": t["floor"],
            "x_floor": t[name] / t["floor"],
            "x_pytorch_grad_cam": t[name] / t["pytorch-grad-cam"],
            "cpu_seconds": cpu[name],
            "floor_cpu_seconds": cpu["floor"],
            "cpu_x_floor": cpu[name] / cpu["floor"],
            "cpu_x_pytorch_grad_cam": cpu[name] / cpu["pytorch-grad-cam"],
        }
        for name in ("medlrp", "pytorch-grad-cam")
    ]
    for row in rows:
        show(row)
        cpu_row = {**row, "impl": f"{row['impl']} (CPU s)", "seconds": row["cpu_seconds"]}
        show(cpu_row | {"x_floor": row["cpu_x_floor"], "x_pytorch_grad_cam": row["cpu_x_pytorch_grad_cam"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--cams", default="gradcam,gradcam++,hirescam,layercam,xgradcam", help="gradient CAMs"
    )
    parser.add_argument("--no-scorecam", action="store_true", help="skip the (long) Score-CAM case")
    parser.add_argument("--scorecam-model", choices=sorted(SCORE_CASES), default="resnet18")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'case':42} {'impl':22} {'seconds':>8} {'x plain/floor':>14} {'x pytorch-grad-cam':>19}")
    rows = gradient_cams(args.repeats, [m for m in args.cams.split(",") if m])
    if not args.no_scorecam:
        rows += score_cam(max(1, args.repeats // 2), args.scorecam_model)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "load_average": list(os.getloadavg()),
    }
    name = "cam_speed.json" if args.scorecam_model == "resnet18" else f"cam_speed_{args.scorecam_model}.json"
    (RESULTS / name).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
