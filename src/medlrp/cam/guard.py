"""Running a user's model without changing it: eval mode for the call, hooks that never outlive it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from medlrp.errors import InputError


class HookList(list):
    """Hook handles registered during one call; :meth:`remove_all` undoes every one of them."""

    def remove_all(self) -> None:
        """Remove every registered hook (idempotent)."""
        while self:
            self.pop().remove()


# Calls in progress per model (several threads may explain one model at once): the first call saves
# the modules' train/eval flags and sets eval mode, the last one to finish restores them.
_ACTIVE_LOCK = threading.Lock()
_ACTIVE: dict[int, tuple[int, list[tuple[torch.nn.Module, bool]]]] = {}


@contextmanager
def explaining(model: torch.nn.Module) -> Iterator[HookList]:
    """Run ``model`` in eval mode for the duration of a call and give a list for hook handles.

    Eval mode makes each sample's explanation independent of the rest of the batch (BatchNorm uses
    its running statistics and does not update them; dropout is off). On exit, also on an exception,
    every hook in the yielded list is removed and every module's ``training`` flag is restored as it
    was (set directly, so no user ``train()`` override runs). Calls overlapping in several threads share
    one saved state: the flags are restored when the last of them ends.
    """
    key = id(model)
    with _ACTIVE_LOCK:
        count, flags = _ACTIVE.get(key, (0, []))
        if count == 0:
            flags = [(m, m.training) for m in model.modules()]
            for module, _ in flags:
                module.training = False
        _ACTIVE[key] = (count + 1, flags)
    hooks = HookList()
    try:
        yield hooks
    finally:
        hooks.remove_all()
        with _ACTIVE_LOCK:
            count, flags = _ACTIVE[key]
            if count == 1:
                del _ACTIVE[key]
                for module, flag in flags:
                    module.training = flag
            else:
                _ACTIVE[key] = (count - 1, flags)


class ThreadHook:
    """A forward hook that acts only on forward passes of the thread that created it.

    Hooks live on the (shared) modules, so another thread's forward pass through the same model runs
    them too; there this wrapper does nothing (returns ``None``: the output is left as it is).
    """

    def __init__(self, hook: Callable[[torch.nn.Module, Any, Any], Any]) -> None:
        self.hook = hook
        self.thread = threading.get_ident()

    def __call__(self, module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        """Run the wrapped hook in the creating thread; do nothing in any other."""
        if threading.get_ident() != self.thread:
            return None
        return self.hook(module, inputs, output)


def logits(output: Any) -> torch.Tensor:
    """The logits tensor of a model's output: a tensor, an object with ``.logits``, or a tuple's first."""
    if isinstance(output, torch.Tensor):
        out = output
    elif hasattr(output, "logits"):
        out = output.logits
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        out = output[0]
    else:
        raise InputError(f"the model returned {type(output).__name__}, not a logits tensor")
    if out.ndim < 2:
        raise InputError(
            f"the model returned logits of shape {tuple(out.shape)}, expected (N, classes) or, for "
            "segmentation, (N, classes, *spatial)"
        )
    return out


def check_input(x: Any, method: str, min_spatial: int = 0) -> torch.Tensor:
    """Validate the input batch ``x`` of ``method``: a floating tensor ``(N, C, *spatial)``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{method}: the input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{method}: the input must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 2 + min_spatial or x.shape[0] == 0:
        raise InputError(
            f"{method}: the input must be a non-empty batch (N, C, *spatial) with at least "
            f"{min_spatial} spatial dims, got shape {tuple(x.shape)}"
        )
    return x


def refuse_torchscript(model: torch.nn.Module, method: str) -> None:
    """A CAM of a TorchScript model is an :class:`InputError` (one line) instead of PyTorch's own error.

    A CAM reads a layer's activations through a forward hook, and a scripted or traced model takes no
    hooks (its operations run in C++).
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError(
            f"{method}: a CAM reads a layer's activations through a hook, and a TorchScript model takes "
            "none: explain the Python model (a medlrp checkpoint), or use a gradient method (gradient, "
            "input-x-gradient, integrated-gradients, smoothgrad, occlusion)"
        )


def reject_unknown(method: str, options: dict[str, Any]) -> None:
    """Raise :class:`InputError` naming any option ``method`` does not take."""
    if options:
        raise InputError(f"{method}: unknown option(s) {', '.join(sorted(options))}")
