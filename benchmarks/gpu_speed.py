"""LRP, ViT LRP, Grad-CAM and guided training on a GPU against their peers: issue 19's table in one command.

    .venv/bin/python benchmarks/gpu_speed.py                       # CUDA, the issue's cases, 10 rounds
    .venv/bin/python benchmarks/gpu_speed.py --device cpu --quick  # tiny batches and sizes (~1-2 min)
    .venv/bin/python benchmarks/gpu_speed.py --sections lrp,vit    # a part of it

One process; float32; ``torch.backends.cudnn.benchmark = True`` (TF32 left at torch's defaults, which the
header prints); every model from torchvision with random weights (nothing downloaded). Time: the median
of ``--rounds`` interleaved rounds (every contender once per round, in turn, the device synchronised
around each call; one warm-up call each first; see benchmarks/timing.py). Memory: the peak growth above
what was allocated before one call (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak resident set
size growth, Linux ``VmHWM``, indicative only), as a multiple of the plain pass's. A replayed row's
memory is the peak of a fresh explainer's first call (record, warm-up and capture), the size of what its
captured pass keeps in its memory pool: a replay alone allocates only its outputs. A replayed row whose
capture fell back to the eager pass says so in a note.

Sections (each row's ratios are against its own "plain"):

* ``lrp``: CNNs, plain = a forward and a backward to the input (parameters frozen). medlrp
  ``epsilon``, ``epsilon-plus-flat``, ``epsilon-gamma-box``, each eager (``graphs=False``) and captured
  and replayed (``graphs=True``: CUDA graphs on a GPU, see medlrp.lrp.replay; on the CPU the eager
  stand-in, which only checks the protocol); zennit 0.5 ``EpsilonPlusFlat`` and ``EpsilonGammaBox``
  with its canonizers (ResNet and VGG only, on the issue's rows).
* ``vit``: torchvision ViT-B/16, plain as above; medlrp ``cp-lrp`` and ``attnlrp`` (eager and replayed)
  against LXT 2.1's CP-LRP (its class patches applied around each of its calls and undone after).
* ``cam``: Grad-CAM on ResNet50's ``layer4``, plain = a forward and a backward to every parameter (what
  pytorch-grad-cam needs); medlrp against pytorch-grad-cam 1.5.
* ``guided``: one training step (AdamW) on ResNet18 (2 classes), plain = cross-entropy; medlrp's
  ``GuidedLoss`` with its default (one case in 32 explained) and explaining every case.

The peers (zennit, LXT, pytorch-grad-cam) are optional: a peer that cannot be imported is skipped with
a note, so the script runs where only torch and torchvision are installed. Writes
``benchmarks/results/gpu_speed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import VisionTransformer
from torchvision.models.resnet import BasicBlock, ResNet

import medlrp
from lrp_speed import contender
from medlrp.train.guided import GuidedLoss
from timing import device_sync, interleaved, peak_memory, release_freed_memory
from vit_speed import lxt_cp_map, lxt_relevance

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).resolve().parent / "results"
COMPOSITES = ("epsilon", "epsilon-plus-flat", "epsilon-gamma-box")
ZENNIT_COMPOSITES = ("epsilon-plus-flat", "epsilon-gamma-box")
T = TypeVar("T")
#: Why a peer was skipped (printed under the tables).
NOTES: list[str] = []


@dataclass(frozen=True)
class Case:
    """One row: a torchvision architecture, a batch size, one sample's shape ``(C, *spatial)``."""

    label: str
    arch: str
    batch: int
    shape: tuple[int, ...]
    zennit: bool = False


#: The issue's rows.
LRP_CASES = [
    Case("ResNet50, 64", "resnet50", 64, (3, 224, 224), zennit=True),
    Case("ResNet50, 8", "resnet50", 8, (3, 224, 224)),
    Case("ResNet50, 256", "resnet50", 256, (3, 224, 224)),
    Case("VGG16, 32", "vgg16", 32, (3, 224, 224), zennit=True),
    Case("DenseNet121, 64", "densenet121", 64, (3, 224, 224)),
    Case("r3d_18 (3D), 2x3x64x160x160", "r3d_18", 2, (3, 64, 160, 160)),
]
#: ``--quick``: the same architectures, tiny batches and sizes (a CPU check of the whole script).
QUICK_LRP_CASES = [
    Case("ResNet50, 2 (64 px)", "resnet50", 2, (3, 64, 64), zennit=True),
    Case("VGG16, 1 (64 px)", "vgg16", 1, (3, 64, 64), zennit=True),
    Case("DenseNet121, 2 (64 px)", "densenet121", 2, (3, 64, 64)),
    Case("r3d_18 (3D), 1x3x8x32x32", "r3d_18", 1, (3, 8, 32, 32)),
]
#: ``--smoke``: the smallest configuration of every section (the test suite's run).
SMOKE_LRP_CASES = [Case("ResNet18, 1 (32 px)", "resnet18", 1, (3, 32, 32), zennit=True)]
#: Per mode: (ViT batch, ViT size, CAM batch, CAM size, guided batch, guided size).
SIZES = {"full": (64, 224, 64, 224, 64, 224), "quick": (2, 64, 2, 64, 2, 64), "smoke": (1, 32, 1, 32, 2, 32)}


def peer(what: str, load: Callable[[], T]) -> T | None:
    """``load()`` (importing a peer package), or ``None`` with a note saying what is skipped."""
    try:
        return load()
    except Exception as exc:  # ImportError, or a broken install: skip the peer either way
        NOTES.append(f"{what} skipped: the peer package is not importable ({type(exc).__name__}: {exc})")
        return None


def build(arch: str, num_classes: int | None = None) -> torch.nn.Module:
    """A torchvision model with random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if arch == "r3d_18":
        return torchvision.models.video.r3d_18(weights=None, **kwargs).eval()
    return getattr(torchvision.models, arch)(weights=None, **kwargs).eval()


def frozen(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` with its parameters not requiring grad (an explained, not trained, model)."""
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def batch_input(batch: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A seeded random input batch on ``device``."""
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1)).to(device)


def measure(
    fns: dict[str, Callable[[], object]],
    args: argparse.Namespace,
    device: torch.device,
    label: str,
    memory_fns: dict[str, Callable[[], object]] | None = None,
) -> dict[str, dict[str, float]]:
    """Median seconds per contender and (unless ``--no-memory``) peak memory growth in bytes.

    Each contender is called once first (the warm-up); one that fails there (out of memory, a peer
    that does not support this torch) is dropped with a note, so one failure costs its row's cell, not
    the run. ``plain`` must work. ``memory_fns``: the call whose peak is a contender's memory, where it
    is not one call of the contender itself (a replayed pass: its capture).
    """
    for name, fn in list(fns.items()):
        try:
            fn()
        except Exception as exc:
            if name == "plain":
                raise
            NOTES.append(
                f"{label}: {name} failed, left out ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            )
            del fns[name]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    times = interleaved(fns, args.rounds, warmup=False, sync=device_sync(device))
    out = {name: {"seconds": t} for name, t in times.items()}
    if not args.no_memory:
        for name, fn in fns.items():
            out[name]["memory"] = float(peak_memory((memory_fns or {}).get(name, fn), device))
    return out


def medlrp_contenders(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, composites: tuple[str, ...], label: str
) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], object]], Callable[[], None]]:
    """medlrp's contenders ``medlrp NAME`` (eager) and ``medlrp NAME graphs`` (captured and replayed).

    Returns the timed calls, the memory calls of the replayed ones (a fresh explainer's first call:
    its capture) and a function adding a note for each replayed contender that ran eagerly instead.
    """
    fns: dict[str, Callable[[], object]] = {}
    memory: dict[str, Callable[[], object]] = {}
    graphed: dict[str, medlrp.LRP] = {}
    for name in composites:
        eager = medlrp.LRP(model, name, graphs=False)
        fns[f"medlrp {name}"] = lambda lrp=eager: lrp.relevance(x, target)
        graphed[name] = medlrp.LRP(model, name, graphs=True)
        fns[f"medlrp {name} graphs"] = lambda lrp=graphed[name]: lrp.relevance(x, target)
        memory[f"medlrp {name} graphs"] = lambda name=name: medlrp.LRP(model, name, graphs=True).relevance(
            x, target
        )

    def notes() -> None:
        for name, lrp in graphed.items():
            for why in lrp.replay.eager.values():  # type: ignore[union-attr]
                NOTES.append(f"{label}: medlrp {name} graphs ran eagerly: {why}")

    return fns, memory, notes


def ratios(res: dict[str, dict[str, float]], base: str = "plain") -> dict[str, dict[str, float]]:
    """Each contender's time and memory as multiples of ``base``'s (added as ``x_time``/``x_memory``)."""
    for r in res.values():
        r["x_time"] = r["seconds"] / res[base]["seconds"]
        if "memory" in r and res[base].get("memory"):
            r["x_memory"] = r["memory"] / res[base]["memory"]
    return res


def lrp_row(case: Case, device: torch.device, args: argparse.Namespace, with_zennit: bool) -> dict[str, Any]:
    model = frozen(build(case.arch), device)
    x = batch_input(case.batch, case.shape, device)
    with torch.no_grad():
        target = model(x).argmax(1)
    fns = {"plain": contender("plain", "", case.arch, model, x, target)}
    ours, memory, notes = medlrp_contenders(model, x, target, COMPOSITES, case.label)
    fns.update(ours)
    if with_zennit and case.zennit:
        for name in ZENNIT_COMPOSITES:
            fns[f"zennit {name}"] = contender("zennit", name, case.arch, model, x, target)
    res = ratios(measure(fns, args, device, case.label, memory))
    notes()
    return {"case": case.label, "results": res}


def _x(res: dict[str, dict[str, float]], key: str, field: str = "x_time") -> str:
    return f"{res[key][field]:.2f}x" if key in res and field in res[key] else "-"


def _span(res: dict[str, dict[str, float]], keys: list[str]) -> str:
    """The range of the memory multiples of ``keys`` (``0.8-1.0x``), ``-`` when none was measured."""
    values = [res[k]["x_memory"] for k in keys if "x_memory" in res.get(k, {})]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.1f}x" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}x"


def print_lrp(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| model, batch | plain | medlrp epsilon | plus-flat | gamma-box | graphs: epsilon / plus-flat / "
        "gamma-box | zennit plus-flat / gamma-box | peak memory medlrp / graphs / zennit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        res = row["results"]
        medlrp_keys = [f"medlrp {n}" for n in COMPOSITES]
        graph_keys = [f"medlrp {n} graphs" for n in COMPOSITES]
        zennit_keys = [f"zennit {n}" for n in ZENNIT_COMPOSITES]
        zennit = " / ".join(_x(res, k) for k in zennit_keys) if zennit_keys[0] in res else ""
        graphs = " / ".join(_x(res, k) for k in graph_keys)
        memory = f"{_span(res, medlrp_keys)} / {_span(res, graph_keys)}"
        memory += f" / {_span(res, zennit_keys)}" if zennit else ""
        cells = [row["case"], f"{1000 * res['plain']['seconds']:.1f} ms", *(_x(res, k) for k in medlrp_keys)]
        print("| " + " | ".join([*cells, graphs, zennit, memory]) + " |")


def vit_rows(device: torch.device, args: argparse.Namespace, batch: int, size: int) -> dict[str, Any]:
    torch.manual_seed(0)
    if args.mode == "smoke":  # ViT-B/16's code with two small blocks: the same path in a second
        model = VisionTransformer(size, 16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    else:
        model = torchvision.models.vit_b_16(weights=None, image_size=size).eval()
    with torch.no_grad():  # torchvision zero-initialises the head
        model.heads.head.weight.normal_(0.0, 0.02)
    model = frozen(model, device)
    x = batch_input(batch, (3, size, size), device)
    target = torch.arange(batch, device=device) % 1000
    name = "ViT (2 blocks, width 32)" if args.mode == "smoke" else "ViT-B/16"
    label = f"{name}, {batch} ({size} px)"
    fns: dict[str, Callable[[], object]] = {"plain": contender("plain", "", "vit_b_16", model, x, target)}
    ours, memory, notes = medlrp_contenders(model, x, target, ("cp-lrp", "attnlrp"), label)
    fns.update(ours)
    patch_map = peer("LXT 2.1 CP-LRP", lxt_cp_map)  # without running lxt's package init (it imports LLMs)
    if patch_map is not None:
        fns["LXT 2.1 CP-LRP"] = lambda: lxt_relevance(model, x, target, patch_map)
    res = ratios(measure(fns, args, device, label, memory))
    notes()
    return {"case": label, "results": res}


def cam_rows(device: torch.device, args: argparse.Namespace, batch: int, size: int) -> dict[str, Any]:
    model = build("resnet50").to(device)  # parameters require grad: pytorch-grad-cam backpropagates to them
    x = batch_input(batch, (3, size, size), device)
    target = torch.arange(batch, device=device) % 1000

    def plain() -> None:
        model(x).gather(1, target[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    fns: dict[str, Callable[[], object]] = {
        "plain": plain,
        "medlrp gradcam": lambda: (
            medlrp.explain(model, x, target, method="gradcam", layer="layer4").relevance
        ),
    }
    grad_cam = peer("pytorch-grad-cam", lambda: importlib.import_module("pytorch_grad_cam"))
    if grad_cam is not None:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = grad_cam.GradCAM(model=model, target_layers=[model.layer4[-1]])
        targets = [ClassifierOutputTarget(int(t)) for t in target]

        def theirs() -> object:
            out = cam(x, targets)
            model.zero_grad(set_to_none=True)
            return out

        fns["pytorch-grad-cam GradCAM"] = theirs
    label = f"Grad-CAM ResNet50 layer4, {batch} ({size} px)"
    res = ratios(measure(fns, args, device, label))
    if grad_cam is not None:  # its hooks come off the model, also when its warm-up failed
        cam.activations_and_grads.release()
    return {"case": label, "results": res}


def training_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """One optimiser step on ``loss_fn()``; returns the (detached) loss."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    opt.step()
    return loss.detach()


def guided_rows(device: torch.device, args: argparse.Namespace, batch: int, size: int) -> dict[str, Any]:
    if args.mode == "smoke":  # ResNet18's code with one block per stage: the same path, half the cost
        torch.manual_seed(0)
        model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2).train().to(device)
    else:
        model = build("resnet18", num_classes=2).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x = batch_input(batch, (3, size, size), device)
    y = torch.arange(batch, device=device) % 2
    mask = torch.zeros(batch, 1, size, size, device=device)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    default, every = GuidedLoss(), GuidedLoss(explain_every=1)
    fns: dict[str, Callable[[], object]] = {
        "plain": lambda: training_step(model, opt, lambda: F.cross_entropy(model(x), y)),
        "medlrp guided (1 in 32 explained)": lambda: training_step(
            model, opt, lambda: default(model, x, y, mask)[0]
        ),
        "medlrp guided (every case explained)": lambda: training_step(
            model, opt, lambda: every(model, x, y, mask)[0]
        ),
    }
    name = "ResNet (1 block per stage)" if args.mode == "smoke" else "ResNet18"
    label = f"guided step {name}, {batch} ({size} px)"
    return {"case": label, "results": ratios(measure(fns, args, device, label))}


def print_rows(title: str, row: dict[str, Any], against: str | None = None) -> None:
    """A table of one row's contenders: time and memory against plain (and against ``against``)."""
    res = row["results"]
    print(f"\n{title}: {row['case']}, plain {1000 * res['plain']['seconds']:.1f} ms")
    extra = f" | x {against} |" if against and against in res else " |"
    print("| contender | ms | x plain time | x plain memory" + extra)
    print("|---|---|---|---|" + ("---|" if extra != " |" else ""))
    for name, r in res.items():
        cells = [name, f"{1000 * r['seconds']:.1f}", _x(res, name), _x(res, name, "x_memory")]
        if extra != " |":
            cells.append(f"{r['seconds'] / res[against]['seconds']:.2f}x")
        print("| " + " | ".join(cells) + " |")


def header(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "mode": args.mode,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "memory": "none"
        if args.no_memory
        else ("torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS growth (VmHWM)"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn.benchmark"] = torch.backends.cudnn.benchmark
        info["tf32 matmul / cudnn"] = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    return info


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10; quick 2)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny batches and sizes (a CPU check)")
    mode.add_argument("--smoke", action="store_true", help="the smallest case of every section (the test)")
    parser.add_argument(
        "--sections", default="lrp,vit,cam,guided", help="comma-separated: lrp,vit,cam,guided"
    )
    parser.add_argument("--no-memory", action="store_true", help="times only")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/...)")
    args = parser.parse_args()
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.rounds is None:
        args.rounds = {"full": 10, "quick": 2, "smoke": 1}[args.mode]
    if args.out is None:
        args.out = RESULTS / ("gpu_speed.json" if args.mode == "full" else f"gpu_speed_{args.mode}.json")
    return args


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    if device.type == "cpu" and not args.no_memory and not release_freed_memory():
        # freed tensors must leave the resident set at once for the RSS peak to mean anything
        NOTES.append("CPU memory: glibc's mmap threshold could not be set; the RSS figures may be too low")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    info = header(device, args)
    sections = set(args.sections.split(","))
    vit_b, vit_s, cam_b, cam_s, guided_b, guided_s = SIZES[args.mode]
    report: dict[str, Any] = {"info": info}
    tic = time.perf_counter()
    if "lrp" in sections:
        cases = {"full": LRP_CASES, "quick": QUICK_LRP_CASES, "smoke": SMOKE_LRP_CASES}[args.mode]
        with_zennit = peer("zennit (LRP rows)", lambda: importlib.import_module("zennit")) is not None
        report["lrp"] = [lrp_row(case, device, args, with_zennit) for case in cases]
        print_lrp(report["lrp"])
    if "vit" in sections:
        report["vit"] = vit_rows(device, args, vit_b, vit_s)
        print_rows("ViT LRP", report["vit"], "LXT 2.1 CP-LRP")
    if "cam" in sections:
        report["cam"] = cam_rows(device, args, cam_b, cam_s)
        print_rows("Grad-CAM", report["cam"], "pytorch-grad-cam GradCAM")
    if "guided" in sections:
        report["guided"] = guided_rows(device, args, guided_b, guided_s)
        print_rows("Guided training", report["guided"])
    for note in NOTES:
        print(f"note: {note}")
    report["notes"] = NOTES
    report["seconds"] = time.perf_counter() - tic
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
