"""Small residual CNNs for signals, 2D images and 3D volumes (``cnn1d``, ``cnn2d``, ``cnn3d``).

Plain modules and ``+`` only (Conv, BatchNorm, ReLU, adaptive average pooling, Linear), so every LRP
engine and CAM implementation sees each operation. A stem convolution at full
resolution, then stages of a strided convolution (halving the grid) and one residual block
``relu(x + bn(conv(relu(bn(conv(x))))))``; a 64x64 input ends on an 8x8 grid with three stages.
"""

from __future__ import annotations

import torch
from torch import nn

from medlrp.registry import ARCHITECTURES

_LAYERS: dict[int, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d),
}


class ConvBNReLU(nn.Sequential):
    """Convolution (no bias: the BatchNorm has one), BatchNorm, ReLU."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int = 1) -> None:
        conv, norm, _ = _LAYERS[dims]
        super().__init__(conv(cin, cout, 3, stride=stride, padding=1, bias=False), norm(cout), nn.ReLU())


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity shortcut."""

    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        conv, norm, _ = _LAYERS[dims]
        self.conv1 = conv(channels, channels, 3, padding=1, bias=False)
        self.bn1 = norm(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(channels, channels, 3, padding=1, bias=False)
        self.bn2 = norm(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(x + F(x))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + x)


class ResCNN(nn.Module):
    """Stem, ``len(widths)`` stages (stride-2 conv + residual block), global average pool, linear head.

    Args:
        dims: 1 (signals: leads x samples), 2 or 3 spatial dimensions.
        in_channels: Input channels.
        num_classes: Output classes.
        widths: Channels of each stage; every stage after the first halves the grid.
    """

    def __init__(
        self, dims: int, in_channels: int = 1, num_classes: int = 2, widths: tuple[int, ...] = (16, 32, 64)
    ) -> None:
        super().__init__()
        _, _, pool = _LAYERS[dims]
        self.stem = ConvBNReLU(dims, in_channels, widths[0])
        stages: list[nn.Module] = []
        cin = widths[0]
        for width in widths:
            stages.append(nn.Sequential(ConvBNReLU(dims, cin, width, stride=2), ResidualBlock(dims, width)))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.pool = pool(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.head(self.flatten(self.pool(self.stages(self.stem(x)))))


def _widths(width: int, stages: int) -> tuple[int, ...]:
    return tuple(width * 2**i for i in range(stages))


@ARCHITECTURES.register("cnn1d")
def cnn1d(in_channels: int = 12, num_classes: int = 2, width: int = 16, stages: int = 5) -> ResCNN:
    """A small residual 1D CNN for signals ``(N, leads, samples)``; five stages take 1000 samples to 32."""
    return ResCNN(1, in_channels, num_classes, _widths(width, stages))


@ARCHITECTURES.register("cnn2d")
def cnn2d(in_channels: int = 1, num_classes: int = 2, width: int = 16, stages: int = 3) -> ResCNN:
    """A small residual 2D CNN (about 0.12M parameters at ``width=16, stages=3``)."""
    return ResCNN(2, in_channels, num_classes, _widths(width, stages))


@ARCHITECTURES.register("cnn3d")
def cnn3d(in_channels: int = 1, num_classes: int = 2, width: int = 8, stages: int = 3) -> ResCNN:
    """A small residual 3D CNN (about 0.09M parameters at ``width=8, stages=3``)."""
    return ResCNN(3, in_channels, num_classes, _widths(width, stages))
