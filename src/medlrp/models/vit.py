"""A tiny Vision Transformer for 2D images and 3D volumes (``vit2d``, ``vit3d``).

Written with standard torch operations an LRP engine can see: a convolutional patch embedding, a class
token, learned position embeddings, pre-norm blocks of ``nn.LayerNorm``, multi-head self-attention with
explicit ``q @ k^T`` / ``softmax`` / ``@ v`` matmuls, and a ``Linear-GELU-Linear`` MLP; the head reads the
class token. The grid of patches follows the image size (no hard-coded 14x14): ``grid = size // patch``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medlrp.errors import InputError
from medlrp.registry import ARCHITECTURES


class Attention(nn.Module):
    """Multi-head self-attention with explicit matmuls (no fused kernel hides the attention map)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"ViT width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, dim) -> (N, T, dim)``."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


class Mlp(nn.Sequential):
    """``Linear -> GELU -> Linear``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, dim) -> (N, T, dim)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small ViT for 2D or 3D inputs.

    With ``stem > 0`` the patches are embedded after a convolutional stem ("early convolutions",
    Xiao et al. 2021): ``stem`` blocks of a 3x3 convolution with stride 2 and a ReLU, widening to
    ``dim // 2**(stem - k)`` channels, then the patch embedding on the stem's output with kernel
    ``patch_size // 2**stem``. A patch still covers ``patch_size`` input pixels; the stem gives the
    tokens the translation-tolerant local features a plain linear patch embedding must learn for every
    position in its patch (which a tiny ViT on a few hundred cases does not).

    Args:
        dims: 2 or 3 spatial dimensions.
        in_channels: Input channels.
        num_classes: Output classes.
        image_size: Spatial size of the input (``[H, W]`` or ``[D, H, W]``; an int for a cube).
        patch_size: Edge of a (square/cubic) patch; must divide every image dimension.
        dim: Token width.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        stem: Convolutional stem blocks before the patch embedding (0: none).
        pool: What the head reads: ``"cls"`` (the class token) or ``"mean"`` (the mean of the patch
            tokens, as timm's ``global_pool="avg"``; the class token still takes part in attention).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int = 1,
        num_classes: int = 2,
        image_size: int | Sequence[int] = 64,
        patch_size: int = 8,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        stem: int = 0,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise InputError(f"ViT pool must be 'cls' or 'mean', not {pool!r}")
        self.pool = pool
        size = [image_size] * dims if isinstance(image_size, int) else [int(s) for s in image_size]
        if len(size) != dims or any(s % patch_size for s in size):
            raise InputError(
                f"ViT image size {size} must be {dims}D and divisible by patch size {patch_size}"
            )
        if stem < 0 or patch_size % 2**stem:
            raise InputError(f"ViT patch size {patch_size} must be divisible by 2**stem ({2**stem})")
        self.grid = [s // patch_size for s in size]
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        layers: list[nn.Module] = []
        channels = in_channels
        for k in range(stem):
            width = max(1, dim // 2 ** (stem - k))
            layers += [conv(channels, width, 3, stride=2, padding=1), nn.ReLU()]
            channels = width
        self.stem = nn.Sequential(*layers)
        kernel = patch_size // 2**stem
        self.patch_embed = conv(channels, dim, kernel, stride=kernel)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + math.prod(self.grid), dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        tokens = self.patch_embed(self.stem(x)).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1))


@ARCHITECTURES.register("vit2d")
def vit2d(
    in_channels: int = 1, num_classes: int = 2, image_size: int | Sequence[int] = 64, **options: Any
) -> TinyViT:
    """A tiny 2D ViT: 64x64 input; ``options`` as :class:`TinyViT` (8x8 patches, 4 blocks of width 64)."""
    return TinyViT(2, in_channels, num_classes, image_size, **options)


@ARCHITECTURES.register("vit3d")
def vit3d(
    in_channels: int = 1, num_classes: int = 2, image_size: int | Sequence[int] = 32, **options: Any
) -> TinyViT:
    """A tiny 3D ViT: 32^3 input; ``options`` as :class:`TinyViT` (8^3 patches, 4 blocks of width 64)."""
    return TinyViT(3, in_channels, num_classes, image_size, **options)
