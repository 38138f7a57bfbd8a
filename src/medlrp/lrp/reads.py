"""Host reads: the few places where a rule branches on a tensor's value, made safe to capture.

Some rules read a value on the host to take a cheaper exact branch: an input known to be >= 0 spares
the products of negative inputs, a merged BatchNorm whose scales are all positive is a plain rescale.
In an ordinary pass such a read is a plain ``bool(condition)`` (see :meth:`Engine.flag
<medlrp.lrp.engine.Engine.flag>`). A captured pass (:mod:`medlrp.lrp.replay`) may not read device
values on the host (a synchronisation, refused while a CUDA graph is captured), so:

* :class:`Recorder`: a first, ordinary pass reads every condition and records its value, in order;
* :class:`Replayer`: the captured pass takes the recorded values instead of reading them, so it runs the
  same operations as the recorded pass, and keeps each condition on the device. :meth:`Replayer.guard`
  is one device tensor, true when every condition has its recorded value for the replayed input: only
  then is the replayed result the ordinary pass's result (checked after the replay, one read).

:class:`HostReads` is the CPU stand-in for the capture's refusal: a mode under which reading a tensor's
value on the host raises :class:`HostReadError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

Tensor = torch.Tensor

#: ``read(condition) -> bool``: the value of a 0-dim bool tensor a rule branches on.
Read = Callable[[Tensor], bool]


class HostReadError(RuntimeError):
    """A pass read a device value on the host where it may not (a captured pass)."""


class Recorder:
    """Reads each condition (an ordinary host read) and records its value."""

    def __init__(self) -> None:
        self.values: list[bool] = []

    def __call__(self, condition: Tensor) -> bool:  # noqa: D102
        value = bool(condition)
        self.values.append(value)
        return value


class Replayer:
    """Answers each read with the recorded value, in order, and keeps the condition for :meth:`guard`."""

    def __init__(self, values: list[bool]) -> None:
        self.values = tuple(values)
        self.conditions: list[Tensor] = []

    def __call__(self, condition: Tensor) -> bool:  # noqa: D102
        i = len(self.conditions)
        if i >= len(self.values):
            raise HostReadError("the captured pass reads more values than the recorded pass")
        value = self.values[i]
        self.conditions.append(condition.detach() if value else condition.detach().logical_not())
        return value

    def guard(self) -> Tensor | None:
        """A 0-dim bool tensor, true when every condition has its recorded value (``None``: no reads)."""
        if len(self.conditions) != len(self.values):
            raise HostReadError("the captured pass reads fewer values than the recorded pass")
        return torch.stack(self.conditions).all() if self.conditions else None


#: Tensor methods that read values on the host (or make a shape from values, which reads them too).
_READS = {
    Tensor.__bool__,
    Tensor.__int__,
    Tensor.__float__,
    Tensor.__index__,
    Tensor.item,
    Tensor.tolist,
    Tensor.numpy,
    Tensor.cpu,
    Tensor.nonzero,
    Tensor.unique,
    Tensor.masked_select,
    torch.nonzero,
    torch.unique,
    torch.masked_select,
    torch.equal,
    Tensor.equal,
    torch.allclose,
    Tensor.allclose,
    torch.is_nonzero,
    Tensor.__repr__,
}


#: Functions that copy host data (a number, a list) into a new tensor: on a GPU a synchronising copy.
_COPIES = {torch.as_tensor, torch.tensor, Tensor.new_tensor}


def on_device(value: Tensor | float, like: Tensor) -> Tensor:
    """``value`` as a tensor of ``like``'s dtype and device, a number filled on the device.

    ``torch.as_tensor(number, device=cuda)`` copies the number from the host, which a CUDA capture
    refuses; the fill writes the same value (the number rounded to the dtype) without a copy.
    """
    if isinstance(value, Tensor):
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return torch.full((), value, dtype=like.dtype, device=like.device)


class HostReads(TorchFunctionMode):
    """Refuse every host read of a tensor's value and every copy of host data into a tensor.

    What a CUDA graph capture refuses, with a clear error (the CPU stand-in of its refusal).
    """

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:  # noqa: D105
        if func in _READS:
            name = getattr(func, "__name__", repr(func))
            raise HostReadError(
                f"the pass reads a tensor's value on the host ({name}), which a capture refuses"
            )
        data = args[1] if func is Tensor.new_tensor and len(args) > 1 else args[0] if args else None
        if func in _COPIES and not isinstance(data, Tensor):
            name = getattr(func, "__name__", repr(func))
            raise HostReadError(f"the pass copies host data into a tensor ({name}), which a capture refuses")
        return func(*args, **(kwargs or {}))


__all__ = ["HostReadError", "HostReads", "Read", "Recorder", "Replayer", "on_device"]
