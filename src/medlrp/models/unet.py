"""Small U-Nets for 2D images and 3D volumes (``unet2d``, ``unet3d``): per-pixel class logits.

Ronneberger et al. 2015 (2D), Cicek et al. 2016 (3D), shrunk to phantom size: ``depth`` levels of two
3x3 convolutions with a normalisation and an activation, going down by max-pooling (or a strided
convolution) and up by a transposed convolution (or (bi/tri)linear upsampling and a 1x1 convolution),
the encoder's features concatenated to the decoder's at each level, and a 1x1 convolution as the head.
The output is ``(N, num_classes, *spatial)`` logits on the input's grid (class 0 is the background).

Plain modules and ``torch.cat`` only, so every LRP engine and CAM implementation sees each operation.
Every spatial size must be divisible by ``2**depth``.
"""

from __future__ import annotations

import torch
from torch import nn

from medlrp.errors import InputError
from medlrp.registry import ARCHITECTURES

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_NORM = {
    "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}
_ACT = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "prelu": nn.PReLU}
_DOWN = ("maxpool", "conv")
_UP = ("transpose", "linear")


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "instance":
        return _NORM[kind][dims](channels, affine=True)
    return _NORM[kind][dims](channels)


class ConvBlock(nn.Sequential):
    """Two ``conv3x3 -> norm -> activation`` (no conv bias: the normalisation has one)."""

    def __init__(self, dims: int, cin: int, cout: int, norm: str, act: str) -> None:
        conv = _CONV[dims]
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=False),
            _norm(norm, dims, cout),
            _ACT[act](),
            conv(cout, cout, 3, padding=1, bias=False),
            _norm(norm, dims, cout),
            _ACT[act](),
        )


class UNet(nn.Module):
    """A U-Net with concatenated skips.

    Args:
        dims: 2 or 3 spatial dimensions.
        in_channels: Input channels.
        num_classes: Output classes (background included).
        width: Channels of the first level; each level below doubles them.
        depth: Down-sampling steps (the bottleneck is ``depth`` levels below the input).
        norm: ``"batch"`` (BatchNorm) or ``"instance"`` (InstanceNorm with affine parameters).
        act: ``"relu"``, ``"leakyrelu"`` (slope 0.01) or ``"prelu"``.
        down: ``"maxpool"`` (2x2 max-pooling) or ``"conv"`` (a 2x2 convolution with stride 2).
        up: ``"transpose"`` (a 2x2 transposed convolution with stride 2) or ``"linear"`` ((bi/tri)linear
            upsampling by 2, then a 1x1 convolution halving the channels).

    Raises:
        InputError: An unknown option, or ``depth`` or ``width`` below 1.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 8,
        depth: int = 3,
        norm: str = "batch",
        act: str = "relu",
        down: str = "maxpool",
        up: str = "transpose",
    ) -> None:
        super().__init__()
        for name, value, known in (("norm", norm, _NORM), ("act", act, _ACT), ("down", down, _DOWN)):
            if value not in known:
                raise InputError(f"U-Net {name} must be one of {', '.join(known)}, not {value!r}")
        if up not in _UP:
            raise InputError(f"U-Net up must be one of {', '.join(_UP)}, not {up!r}")
        if depth < 1 or width < 1:
            raise InputError(f"U-Net depth and width must be at least 1, not {depth} and {width}")
        self.depth = depth
        widths = [width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoders.append(ConvBlock(dims, cin, w, norm, act))
            self.downs.append(_POOL[dims](2) if down == "maxpool" else _CONV[dims](w, w, 2, stride=2))
            cin = w
        self.bottleneck = ConvBlock(dims, widths[-2], widths[-1], norm, act)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            wide, w = widths[level + 1], widths[level]
            if up == "transpose":
                self.ups.append(_CONV_T[dims](wide, w, 2, stride=2))
            else:
                mode = "bilinear" if dims == 2 else "trilinear"
                self.ups.append(
                    nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), _CONV[dims](wide, w, 1))
                )
            self.decoders.append(ConvBlock(dims, 2 * w, w, norm, act))
        self.head = _CONV[dims](widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, *spatial)``."""
        step = 2**self.depth
        if any(int(s) % step for s in x.shape[2:]):
            raise InputError(
                f"U-Net of depth {self.depth} needs every spatial size divisible by {step}, "
                f"got {tuple(x.shape[2:])}"
            )
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@ARCHITECTURES.register("unet2d")
def unet2d(
    in_channels: int = 1, num_classes: int = 2, width: int = 8, depth: int = 3, **options: str
) -> UNet:
    """A small 2D U-Net (about 0.12M parameters at ``width=8, depth=3``); ``options`` as :class:`UNet`."""
    return UNet(2, in_channels, num_classes, width, depth, **options)


@ARCHITECTURES.register("unet3d")
def unet3d(
    in_channels: int = 1, num_classes: int = 2, width: int = 8, depth: int = 3, **options: str
) -> UNet:
    """A small 3D U-Net (about 0.35M parameters at ``width=8, depth=3``); ``options`` as :class:`UNet`."""
    return UNet(3, in_channels, num_classes, width, depth, **options)
