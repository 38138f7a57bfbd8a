"""The CAM template: one code path for 2D, 3D and ViT tokens; subclasses only make the weights.

Every CAM is ``sum_c w_c * A_c`` over the channels of a layer's activation ``A`` (``b, c, *spatial``).
Grad-CAM-like methods make ``w`` from the gradient of the target logit with respect to ``A``: either one
weight per channel (``(N, C, 1, ...)``) or one per position (``(N, C, *spatial)``, HiResCAM, LayerCAM);
Score-CAM makes it from forward passes of masked inputs. No graph is recorded before the layer (the
forward pass runs under ``no_grad`` until the layer's hook switches recording on), and the gradient is
taken with ``torch.autograd.grad`` with respect to the layer's output only: the backward pass covers the
layers after it and computes no parameter gradients (the user's ``.grad`` fields are never touched).
A Grad-CAM thus costs about one forward pass plus the backward of the head.

Maps are raw: no min-max scaling; a ReLU only where ``relu=True`` (each method's default follows its
paper). They are upsampled to the input's spatial size with (bi/tri)linear interpolation
(``align_corners=False``, which matches cv2's ``INTER_LINEAR`` used by pytorch-grad-cam), or returned at
the layer's own resolution with ``upsample=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from medlrp.cam.guard import (
    HookList,
    ThreadHook,
    check_input,
    explaining,
    logits,
    refuse_torchscript,
    reject_unknown,
)
from medlrp.cam.layers import Layer, count_calls, resolve_layer, split_call
from medlrp.cam.tokens import GridRecorder, is_patchify, to_spatial
from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.region import Goal, Region, resolve_goal
from medlrp.targets import Target

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def spatial_dims(a: torch.Tensor) -> tuple[int, ...]:
    """The spatial dims of a ``(N, C, *spatial)`` tensor."""
    return tuple(range(2, a.ndim))


def upsample(maps: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Resize ``(N, C, *spatial)`` maps to ``size`` with (bi/tri)linear interpolation."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    mode = _MODES.get(len(size))
    if mode is None:
        raise InputError(f"cannot interpolate maps with {len(size)} spatial dims")
    return F.interpolate(maps, size=tuple(size), mode=mode, align_corners=align_corners)


class _Capture:
    """Forward hook on the CAM layer: keeps the output of one of its calls and hands a clone downstream.

    ``call`` says which call of the layer in the forward pass is kept (0-based); ``None`` keeps the last
    one (a module may run several times per forward pass, e.g. one activation module shared by many
    blocks). With ``track=True`` the forward pass runs under ``torch.no_grad()`` up to the kept call,
    and the hook turns gradient recording on there (the enclosing ``no_grad`` restores the caller's
    mode on exit, also on an exception): the kept output is a fresh leaf that requires grad, so the
    graph covers only what runs after it and the backward pass stops there. Keeping the last call, every
    call is cut that way and the latest one wins: no path from the last call to the output passes
    through an earlier call, so its gradient is the same. The clone keeps the kept activation safe from
    in-place operations after the layer (e.g. an in-place ReLU): activation and gradient then belong to
    the same tensor. Register it wrapped in :class:`~medlrp.cam.guard.ThreadHook` (other threads' passes
    through a shared model must not reach it).
    """

    def __init__(self, grid: GridRecorder, track: bool, call: int | None = None) -> None:
        self.output: torch.Tensor | None = None
        self.grid: tuple[int, ...] | None = None
        self.calls = 0
        self.call = call
        self._grid = grid
        self._track = track

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        if self._track:
            torch.set_grad_enabled(True)
            t = t.detach().requires_grad_(True)
        self.output = t
        return t.clone()

    def __call__(self, module: torch.nn.Module, inputs: object, output: Any) -> Any:
        index = self.calls
        self.calls += 1
        if self.call is not None and index != self.call:
            return None
        self.grid = self._grid.grid
        if isinstance(output, torch.Tensor):
            return self._keep(output)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return type(output)((self._keep(output[0]), *output[1:]))
        raise InputError(
            f"the CAM layer {type(module).__name__} returns {type(output).__name__}, not a tensor"
        )

    def activation(self, name: str) -> torch.Tensor:
        if self.calls == 0 or self.output is None:
            if self.calls == 0:
                raise InputError(f"layer {name!r} ran 0 times in the forward pass; choose a layer that runs")
            raise InputError(
                f"layer {name!r} ran {self.calls} times in one forward pass; there is no call {self.call} "
                f"(calls count from 0: layer='{name}:0' ... '{name}:{self.calls - 1}')"
            )
        return self.output


class BaseCAM:
    """A class activation map of one layer; subclasses implement :meth:`weights`.

    Args:
        model: The classifier; never changed (run in eval mode for the call, hooks removed after it).
        layer: A module of ``model`` or its dotted name; ``None`` picks the last convolutional block
            (CNNs) or the last transformer block whose patch tokens reach the output (ViTs). A module
            that runs several times in one forward pass (one activation module shared by many blocks)
            is taken at its last call; ``"name:K"`` or ``(layer, K)`` picks call ``K`` (0-based,
            negative from the end).
        relu: Clamp the map at zero (default: what the method's paper defines).
        upsample: Resize the map to the input's spatial size (default); ``False`` keeps the layer's.
        grid: The patch grid of a ViT without a patch-embedding convolution (normally read off it).
    """

    name: ClassVar[str] = "cam"
    uses_gradients: ClassVar[bool] = True
    default_relu: ClassVar[bool] = True

    def __init__(
        self,
        model: torch.nn.Module,
        layer: Layer = None,
        *,
        relu: bool | None = None,
        upsample: bool = True,
        grid: Sequence[int] | None = None,
        **unknown: Any,
    ) -> None:
        reject_unknown(self.name, unknown)
        self.model = model
        self.layer = layer
        self.relu = self.default_relu if relu is None else bool(relu)
        self.upsample = bool(upsample)
        self.grid = tuple(int(g) for g in grid) if grid is not None else None

    def weights(
        self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, goal: Goal
    ) -> torch.Tensor:
        """Weights broadcastable to ``acts`` (``(N, C, *spatial)``): per channel or per position.

        ``goal`` is the explained quantity (``goal.score(output)``: the target logit, or the target's
        logit sum over a region for segmentation models).
        """
        raise NotImplementedError

    def options(self, layer_name: str) -> dict[str, Any]:
        """The JSON-friendly options recorded in the :class:`Explanation`."""
        opts: dict[str, Any] = {"layer": layer_name, "relu": self.relu, "upsample": self.upsample}
        if self.grid is not None:
            opts["grid"] = list(self.grid)
        return opts

    def __call__(self, x: torch.Tensor, target: Target = None, region: Region = None) -> Explanation:
        """Explain the batch ``x`` (2D or 3D) for ``target`` (``None``: each sample's argmax).

        Segmentation models: the score is class ``target``'s logit sum over ``region`` (pytorch-grad-cam's
        ``SemanticSegmentationTarget``; see :mod:`medlrp.region`). Safe to call from several threads on
        one model: every piece of state lives in this call (hooks act only on this thread's forward
        passes).
        """
        x = check_input(x, self.name, min_spatial=1)
        refuse_torchscript(self.model, self.name)
        with explaining(self.model) as hooks:
            layer, call = split_call(self.layer)
            layer_name, module = resolve_layer(self.model, layer, x)
            if call is not None and call < -1:  # counted from the end: count the calls first
                calls = count_calls(self.model, module, x)
                if call + calls < 0:
                    raise InputError(
                        f"layer {layer_name!r} ran {calls} times in one forward pass; no call {call}"
                    )
                call += calls
            capture = self._hook(module, hooks, None if call == -1 else call)
            with torch.no_grad():  # the capture hook turns recording on at the layer
                out = logits(self.model(x.detach()))
            goal = resolve_goal(out, target, region)
            raw = capture.activation(layer_name)
            grads_raw = self._gradient(out, goal, raw, layer_name) if self.uses_gradients else None
            hooks.remove_all()  # Score-CAM's own forward passes must not run through the capture
            grid = self.grid or capture.grid
            acts = to_spatial(raw.detach(), x, grid, layer_name)
            grads = to_spatial(grads_raw, x, grid, layer_name) if grads_raw is not None else None
            cam = (self.weights(acts, grads, x, goal) * acts).sum(1, keepdim=True)
        if self.relu:
            cam = cam.clamp_min(0)
        if self.upsample:
            cam = upsample(cam, x.shape[2:])
        options = self.options(layer_name)
        if capture.calls > 1:  # which call of a layer that runs several times per forward pass
            options["call"] = capture.calls - 1 if capture.call is None else capture.call
            options["calls"] = capture.calls
        return Explanation(cam.detach(), out.detach(), goal.target, self.name, options, goal.region)

    def _hook(self, module: torch.nn.Module, hooks: HookList, call: int | None) -> _Capture:
        grid = GridRecorder()
        if self.grid is None:
            hooks.extend(
                m.register_forward_hook(ThreadHook(grid)) for m in self.model.modules() if is_patchify(m)
            )
        capture = _Capture(grid, track=self.uses_gradients, call=call)
        hooks.append(module.register_forward_hook(ThreadHook(capture)))
        return capture

    @staticmethod
    def _gradient(out: torch.Tensor, goal: Goal, raw: torch.Tensor, layer_name: str) -> torch.Tensor:
        # Samples are independent in eval mode, so one backward of the summed target scores gives
        # every sample's own gradient.
        with torch.enable_grad():  # the caller may be under no_grad
            score = goal.score(out).sum()
        if not out.requires_grad:
            raise InputError(f"layer {layer_name!r}: the target logit does not depend on its output")
        (grads,) = torch.autograd.grad(score, raw, allow_unused=True)
        if grads is None:
            raise InputError(f"layer {layer_name!r}: the target logit does not depend on its output")
        return grads
