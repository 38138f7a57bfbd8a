"""Layer outputs as ``(N, C, *spatial)`` maps: CNN feature maps as they are, ViT tokens on their grid.

A transformer block's output is ``(N, T, D)``: ``P`` prefix tokens (class, distillation, register
tokens) followed by one token per patch. The patch grid is read off the model's own patch embedding
during the same forward pass (the last convolution whose kernel equals its stride, e.g. timm's
``patch_embed.proj``, torchvision's ``conv_proj``, Hugging Face's ``projection``, MONAI's 3D patch
embedding), so any image size, patch size and number of prefix tokens works; ``P = T - prod(grid)``.
Models without such a convolution take ``grid=`` explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medlrp.errors import InputError

_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def is_patchify(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a convolution that cuts its input into non-overlapping patches."""
    return isinstance(module, _CONVS) and tuple(module.kernel_size) == tuple(module.stride)


class GridRecorder:
    """Forward hook for patch embeddings: remembers the spatial shape of the latest patch grid."""

    def __init__(self) -> None:
        self.grid: tuple[int, ...] | None = None

    def __call__(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        """Remember ``output``'s spatial shape."""
        if isinstance(output, torch.Tensor) and output.ndim >= 3:
            self.grid = tuple(output.shape[2:])


def to_spatial(a: torch.Tensor, x: torch.Tensor, grid: Sequence[int] | None, layer_name: str) -> torch.Tensor:
    """Return the layer output ``a`` as ``(N, C, *spatial)``.

    Args:
        a: The layer's output (or its gradient): ``(N, C, *spatial)`` like ``x``, or tokens ``(N, T, D)``.
        x: The input batch, whose number of dims tells feature maps from tokens.
        grid: The patch grid for tokens (from the patch embedding, or the user's ``grid=``).
        layer_name: For error messages.

    Returns:
        A feature map ``(N, C, *spatial)``; for tokens the prefix tokens are dropped and the patch
        tokens laid out on the grid, channels first.
    """
    if a.ndim == x.ndim:
        return a
    if a.ndim != 3:
        raise InputError(
            f"layer {layer_name!r} outputs shape {tuple(a.shape)}: neither a feature map like the input "
            f"{tuple(x.shape)} nor tokens (N, T, D); choose another layer="
        )
    if grid is None:
        raise InputError(
            f"layer {layer_name!r} outputs tokens {tuple(a.shape)} but the model has no patch-embedding "
            "convolution to read the patch grid from; pass grid=(h, w) or (d, h, w)"
        )
    n, t, d = a.shape
    patches = 1
    for g in grid:
        patches *= int(g)
    prefix = t - patches
    if prefix < 0:
        raise InputError(
            f"layer {layer_name!r} outputs {t} tokens, fewer than the {patches} patches of grid {tuple(grid)}"
        )
    return a[:, prefix:].reshape(n, *grid, d).movedim(-1, 1)
