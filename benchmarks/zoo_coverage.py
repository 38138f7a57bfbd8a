"""Coverage of the classifiers medical users run: LRP conservation and Grad-CAM on a zoo of models.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/zoo_coverage.py            # the whole zoo
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/zoo_coverage.py -k monai   # names containing "monai"

Each model is built with random weights (torchvision, timm, MONAI; 2D and 3D) and made into the copy
of :func:`medlrp.metrics.conservation.conservation_copy` (float64, biases, normalisation shifts, class
tokens and position embeddings zeroed, BatchNorm variances calibrated on the input). On it ``epsilon``
(CNNs) or ``cp-lrp`` (transformers, as ``looks_like_transformer`` decides) must sum to the target
logit: the table gives the largest relative conservation error of the batch (``ok`` within 1e-3) or the
error message, whether ``attnlrp`` runs on the transformers (it is not conservative by design) and
whether Grad-CAM (default layer) runs. Writes benchmarks/results/zoo_coverage.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

import medlrp
from medlrp.lrp import looks_like_transformer
from medlrp.metrics import conservation_error
from medlrp.metrics.conservation import conservation_copy

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 1e-3
CLASSES = 5

Factory = Callable[[], nn.Module]


def _torchvision(name: str, **kw: object) -> Factory:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=CLASSES, **kw)

    return build


def _efficientnet_gn() -> nn.Module:
    """timm's EfficientNet-B0 with GroupNorm (8 groups: its narrowest stage has 16 channels)."""
    import timm
    from timm.layers import GroupNormAct

    return timm.create_model(
        "efficientnet_b0",
        pretrained=False,
        num_classes=CLASSES,
        norm_layer=partial(GroupNormAct, num_groups=8),
    )


def _timm(name: str, **kw: object) -> Factory:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw)

    return build


def _monai(name: str, dims: int, **kw: object) -> Factory:
    def build() -> nn.Module:
        from monai.networks import nets

        return getattr(nets, name)(spatial_dims=dims, **kw)

    return build


def _monai_senet154_tiny(dims: int) -> Factory:
    """SENet154's blocks (grouped SE bottlenecks, 3x3 stem) with one block per stage."""

    def build() -> nn.Module:
        from monai.networks.nets import SENet
        from monai.networks.nets.senet import SEBottleneck

        return SENet(
            spatial_dims=dims,
            in_channels=1,
            block=SEBottleneck,
            layers=(1, 1, 1, 1),
            groups=64,
            reduction=16,
            num_classes=CLASSES,
        )

    return build


def _monai_vit() -> nn.Module:
    from monai.networks.nets import ViT

    class Logits(nn.Module):  # MONAI's ViT returns (logits, hidden states)
        def __init__(self) -> None:
            super().__init__()
            self.vit = ViT(
                in_channels=1,
                img_size=32,
                patch_size=8,
                hidden_size=64,
                mlp_dim=128,
                num_layers=2,
                num_heads=4,
                classification=True,
                num_classes=CLASSES,
                spatial_dims=3,
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.vit(x)[0]

    return Logits()


def _monai_classifier(dims: int, **kw: object) -> Factory:
    def build() -> nn.Module:
        from monai.networks.nets import Classifier

        return Classifier((1,) + (32,) * dims, CLASSES, (8, 16, 32), (2, 2, 2), **kw)

    return build


RGB64, RGB = (3, 64, 64), 3
MONAI_2D, MONAI_3D = (1, 64, 64), (1, 32, 32, 32)
MONAI_CLS = {"in_channels": 1, "out_channels": CLASSES}
MONAI_SE = {"in_channels": 1, "num_classes": CLASSES}
MONAI_EFF = {"model_name": "efficientnet-b0", "in_channels": 1, "num_classes": CLASSES, "pretrained": False}

#: name -> (factory, input shape of one sample)
ZOO: dict[str, tuple[Factory, tuple[int, ...]]] = {
    **{
        f"torchvision/{n}": (_torchvision(n), RGB64)
        for n in (
            "alexnet vgg11 vgg11_bn vgg16_bn resnet18 resnet50 resnext50_32x4d wide_resnet50_2 densenet121 "
            "squeezenet1_0 squeezenet1_1 mobilenet_v2 mobilenet_v3_small mobilenet_v3_large "
            "shufflenet_v2_x0_5 mnasnet0_5 efficientnet_b0 efficientnet_v2_s regnet_x_400mf regnet_y_400mf "
            "convnext_tiny swin_t swin_v2_t"
        ).split()
    },
    "torchvision/googlenet": (_torchvision("googlenet", aux_logits=False, init_weights=True), RGB64),
    "torchvision/inception_v3": (
        _torchvision("inception_v3", aux_logits=False, init_weights=True),
        (3, 96, 96),
    ),
    "torchvision/vit_b_16": (_torchvision("vit_b_16", image_size=64), RGB64),
    "torchvision/maxvit_t": (_torchvision("maxvit_t"), (3, 224, 224)),
    **{
        f"timm/{n}": (
            _timm(n, img_size=64) if "vit" in n or n in ("test_coatnet", "test_maxvit") else _timm(n),
            RGB64,
        )
        for n in (
            "test_byobnet test_coatnet test_convnext test_convnext2 test_convnext3 test_efficientnet "
            "test_efficientnet_evos test_efficientnet_gn test_efficientnet_ln test_mambaout test_maxvit "
            "test_nfnet test_resnet test_vit test_vit2 test_vit3 test_vit4 test_vit_relpos"
        ).split()
    },
    "timm/convnext_atto": (_timm("convnext_atto"), RGB64),
    "timm/mambaout_femto": (_timm("mambaout_femto"), RGB64),
    "timm/ghostnet_100": (_timm("ghostnet_100"), RGB64),
    "timm/regnety_002": (_timm("regnety_002"), RGB64),
    "timm/lcnet_050": (_timm("lcnet_050"), RGB64),
    "timm/efficientnet_b0_gn": (_efficientnet_gn, RGB64),
    "timm/deit_tiny_patch16_224": (_timm("deit_tiny_patch16_224", img_size=64), RGB64),
    "timm/swinv2_cr_tiny_ns_224": (_timm("swinv2_cr_tiny_ns_224", img_size=64, window_size=4), RGB64),
    "monai/DenseNet121-2d": (_monai("DenseNet121", 2, **MONAI_CLS), MONAI_2D),
    "monai/DenseNet121-3d": (_monai("DenseNet121", 3, **MONAI_CLS), MONAI_3D),
    "monai/resnet18-2d": (_monai("resnet18", 2, n_input_channels=1, num_classes=CLASSES), MONAI_2D),
    "monai/resnet10-3d": (_monai("resnet10", 3, n_input_channels=1, num_classes=CLASSES), MONAI_3D),
    "monai/SEResNet50-2d": (_monai("SEResNet50", 2, **MONAI_SE), MONAI_2D),
    "monai/SEResNet50-3d": (_monai("SEResNet50", 3, **MONAI_SE), MONAI_3D),
    "monai/SEResNext50-3d": (_monai("SEResNext50", 3, **MONAI_SE), MONAI_3D),
    "monai/SENet154-tiny-3d": (_monai_senet154_tiny(3), MONAI_3D),
    "monai/EfficientNetBN-b0-2d": (_monai("EfficientNetBN", 2, **MONAI_EFF), MONAI_2D),
    "monai/EfficientNetBN-b0-3d": (_monai("EfficientNetBN", 3, **MONAI_EFF), MONAI_3D),
    "monai/Classifier-2d": (_monai_classifier(2), (1, 32, 32)),
    "monai/Classifier-3d": (_monai_classifier(3), (1, 32, 32, 32)),
    "monai/Classifier-relu-3d": (_monai_classifier(3, act="relu"), (1, 32, 32, 32)),
    "monai/ViT-3d": (_monai_vit, (1, 32, 32, 32)),
}


def _random_zero_weights(model: nn.Module) -> nn.Module:
    """Random weights where the library initialises a weight to zero (torchvision's ViT head)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:150]}"


def check(name: str, factory: Factory, shape: tuple[int, ...]) -> dict[str, object]:
    """Build one model, check LRP conservation and Grad-CAM on it."""
    torch.manual_seed(0)
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    row: dict[str, object] = {"model": name, "input": list(shape)}
    start = time.perf_counter()
    try:
        model = conservation_copy(_random_zero_weights(factory()), x)
    except Exception as err:  # a model that cannot be built here is reported, not hidden
        row.update(composite="-", lrp=f"not built: {_short(err)}", gradcam="-")
        return row
    composite = "cp-lrp" if looks_like_transformer(model) else "epsilon"
    row["composite"] = composite
    try:
        error = float(conservation_error(medlrp.LRP(model, composite)(x)).max())
        row["error"] = error
        row["lrp"] = "ok" if error <= TOLERANCE else f"error {error:.2e} > {TOLERANCE:g}"
    except Exception as err:
        row["lrp"] = _short(err)
    row["lrp_s"] = round(time.perf_counter() - start, 2)
    row["attnlrp"] = "-"
    if composite == "cp-lrp":  # AttnLRP is not conservative by design: it must run, finite
        try:
            r = medlrp.LRP(model, "attnlrp").relevance(x)
            row["attnlrp"] = "ok" if torch.isfinite(r).all() else "non-finite map"
        except Exception as err:
            row["attnlrp"] = _short(err)
    try:
        cam = medlrp.explain(model, x, method="gradcam")
        row["gradcam"] = "ok" if torch.isfinite(cam.relevance).all() else "non-finite map"
    except Exception as err:
        row["gradcam"] = _short(err)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only models whose name contains this")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    print(f"{'model':34} {'composite':9} {'conservation':>12}  {'LRP':8} {'attnlrp':8} Grad-CAM")
    for name, (factory, shape) in ZOO.items():
        if args.k not in name:
            continue
        row = check(name, factory, shape)
        rows.append(row)
        error = f"{row['error']:.1e}" if "error" in row else "-"
        line = f"{name:34} {row['composite']:9} {error:>12}  {row['lrp']:8} {row.get('attnlrp', '-'):8}"
        print(f"{line} {row['gradcam']}", flush=True)
    lrp_ok = sum(r["lrp"] == "ok" for r in rows)
    cam_ok = sum(r["gradcam"] == "ok" for r in rows)
    print(f"LRP conservative within {TOLERANCE:g}: {lrp_ok}/{len(rows)}; Grad-CAM ran: {cam_ok}/{len(rows)}")
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    path = RESULTS / "zoo_coverage.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
