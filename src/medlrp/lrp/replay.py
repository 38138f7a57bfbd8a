"""Captured LRP passes, replayed without Python: a cache of CUDA graphs (or their CPU stand-in) per key.

The interception makes every call of a model with one input shape run the same operations, so the
rule-carrying forward and its backward (one :func:`torch.autograd.grad` to the routed input) can be
captured once and replayed: on CUDA as a ``torch.cuda.CUDAGraph``, which launches the whole pass's
kernels without the engine's per-operation Python work. :class:`Replay` is one explainer's cache.

The protocol, per key:

1. **Record**: the first call runs an ordinary pass on a static copy of the input, recording the values
   the rules branch on (:mod:`medlrp.lrp.reads`). Its result is the call's result.
2. **Capture**: the backend captures the pass on the static input buffer (and static target buffer),
   the recorded values taking the place of the host reads. The target (the argmax when none is given)
   is computed on the device inside the pass.
3. **Replay**: later calls ``copy_`` the input (and target) into the static buffers, replay, check the
   guard (every recorded value still holds for this input: one read after the replay, none when the
   pass reads no values) and return clones of the static outputs, so a later replay never changes a
   returned map. A guard that fails runs that call eagerly.

The key holds everything that changes the operations or the buffers: the input's shape, strides, dtype
and device, whether a target is given, the autocast state and the train/eval mode of every module.
Each entry also holds the model's tensors (parameters, buffers, tensor attributes: :func:`model_state`)
with their version counters and storage addresses: a model whose weights changed in place (an
optimiser step) or were replaced is recaptured, and after :data:`STALE_LIMIT` such changes in a row
(no replay in between) that key runs eagerly for good (a model in training). Never is a captured pass
replayed with stale weights. (A write through ``.data`` bypasses the version counter and cannot be
seen; explain such models with ``LRP(..., graphs=False)``.)

Fallbacks, each with one logged line (logger ``medlrp.lrp.replay``), never an error for the user: a
capture that fails (an operation the backend cannot capture, a host read inside the pass, out of
memory) runs that key eagerly from then on; a segmentation output (its region is resolved with host
reads) is not captured; a guard failing :data:`MISMATCH_LIMIT` times sends its key to the eager path.
At most ``limit`` passes are kept captured (least recently used first out, their memory freed).

Backends (:class:`Backend`): :class:`CudaGraphs` (warm-up passes on a side stream, capture into one
memory pool shared by the explainer's graphs) and :class:`Eager` (CPU: the same static-buffer protocol,
the pass run at each replay, host reads refused during its capture as CUDA refuses them), so the cache,
the keys, the invalidation, the fallbacks and the copy semantics are tested without a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from medlrp.lrp.reads import HostReads, Read, Recorder, Replayer
from medlrp.region import Goal, resolve_goal
from medlrp.targets import Target, resolve_target

Tensor = torch.Tensor
LOG = logging.getLogger(__name__)

#: Weight changes of one key in a row (no replay in between) after which it runs eagerly (training).
STALE_LIMIT = 2
#: Failed guards of one key after which it runs eagerly (inputs that keep changing a rule's branch).
MISMATCH_LIMIT = 3

#: ``run(x, goal_of, reads) -> (relevance, logits, goal)``: one LRP pass without a graph
#: (``create_graph=False``), ``reads`` the engine's host reads (``None``: plain reads) and, with reads
#: given, no derived weights kept between passes.
Pass = Callable[[Tensor, Callable[[Tensor], Goal], Read | None], tuple[Tensor, Tensor, Goal]]
#: The static outputs of a captured pass: ``(relevance, logits, target, guard or None)``.
Outputs = tuple[Tensor, Tensor, Tensor, Tensor | None]


@dataclass
class Captured:
    """A captured pass: ``replay()`` rewrites the static ``outputs``; ``free()`` releases its memory."""

    replay: Callable[[], Outputs]
    outputs: Outputs
    free: Callable[[], None] = lambda: None


class Backend(Protocol):
    """Captures a pass (``step``, which reads and writes only static buffers) for replay."""

    name: str

    def capture(self, step: Callable[[], Outputs], device: torch.device) -> Captured:
        """Capture ``step``; raise on anything that cannot be captured."""
        ...


class Eager:
    """The CPU stand-in: the same protocol, the pass run at each replay into the static outputs.

    Its capture refuses host reads (:class:`~medlrp.lrp.reads.HostReads`) as a CUDA capture does, so a
    pass that would fail to capture on a GPU falls back here too.
    """

    name = "eager"

    def capture(self, step: Callable[[], Outputs], device: torch.device) -> Captured:  # noqa: D102
        with HostReads():
            outputs = step()

        def replay() -> Outputs:
            for static, new in zip(outputs, step(), strict=True):
                if static is not None and static is not new:
                    static.copy_(new)
            return outputs

        return Captured(replay, outputs)


class CudaGraphs:
    """``torch.cuda.CUDAGraph`` capture: warm-up passes on a side stream, then one capture.

    The explainer's graphs share one memory pool: outputs are cloned right after each replay, so one
    graph's intermediates may reuse another's (never replayed at the same time: :class:`Replay` holds a
    lock). Untested on hardware until a GPU session measures it (see docs/lrp.md).
    """

    name = "cuda"

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = max(warmup, 1)
        self.pool: Any = None

    def capture(self, step: Callable[[], Outputs], device: torch.device) -> Captured:  # noqa: D102
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                with HostReads():  # a pass that cannot be captured fails here, before any capture
                    step()
                for _ in range(self.warmup - 1):  # lazy initialisation (cuDNN autotuning, workspaces)
                    step()
            torch.cuda.current_stream().wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize()
            # not torch.cuda.graph(): when its capture fails it leaves the capture stream current
            with torch.cuda.stream(torch.cuda.Stream()):
                # "thread_local": other threads (a loader pinning memory) may go on with their CUDA calls
                graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                try:
                    outputs = step()
                finally:
                    graph.capture_end()  # always ends the capture; raises if it was invalidated

        def replay() -> Outputs:
            graph.replay()
            return outputs

        return Captured(replay, outputs, graph.reset)


def default_backend(device: torch.device) -> Backend:
    """:class:`CudaGraphs` for a CUDA device, else :class:`Eager`."""
    return CudaGraphs() if device.type == "cuda" else Eager()


@dataclass
class Entry:
    """One captured pass with its static buffers and the model tensors it was captured with."""

    x: Tensor
    target: Tensor | None
    captured: Captured
    tensors: tuple[Tensor, ...]
    versions: tuple[tuple[int, int], ...]
    classes: int
    backend: str

    def current(self, tensors: tuple[Tensor, ...], versions: tuple[tuple[int, int], ...]) -> bool:
        """Whether the model still holds the same tensors, unchanged."""
        return (
            len(tensors) == len(self.tensors)
            and all(a is b for a, b in zip(tensors, self.tensors, strict=True))
            and versions == self.versions
        )

    def run(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor, Goal] | None:
        """Replay on ``x``: cloned outputs, or ``None`` when the guard fails (run eagerly then)."""
        self.x.copy_(x)
        if self.target is not None and target is not None:
            self.target.copy_(target)
        relevance, output, t, guard = self.captured.replay()
        if guard is not None and not bool(guard):
            return None
        return relevance.clone(), output.clone(), Goal(t.clone())


@dataclass
class Stats:
    """What the cache did (for tests and benchmarks)."""

    captures: int = 0
    replays: int = 0
    eager: int = 0
    evictions: int = 0
    mismatches: dict[Any, int] = field(default_factory=dict)
    stale: dict[Any, int] = field(default_factory=dict)


class Replay:
    """One explainer's captured passes, by key (see the module docstring).

    Args:
        run: The explainer's pass (see :data:`Pass`).
        model: The explained model (its tensors and modes are part of every entry).
        limit: The most passes kept captured (least recently used first out).
        backend: The capture backend; ``None``: :func:`default_backend` of the input's device.
        check: The explainer's checks of the model (raising for a model it refuses), run before every
            pass except a replay: a replayed key's modes are those checked when it was captured.
    """

    def __init__(
        self,
        run: Pass,
        model: torch.nn.Module,
        limit: int = 8,
        backend: Backend | None = None,
        check: Callable[[], None] = lambda: None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.run, self.model, self.limit, self.backend, self.check = run, model, limit, backend, check
        self.entries: OrderedDict[Any, Entry] = OrderedDict()
        #: Keys that run eagerly for good, with the reason.
        self.eager: dict[Any, str] = {}
        self.stats = Stats()
        #: The default backend of each device, made once (its graphs share one memory pool).
        self.backends: dict[torch.device, Backend] = {}
        self._stale: dict[Any, int] = {}  # weight changes with no replay in between, by key
        self._lock = threading.Lock()

    def __call__(self, x: Tensor, target: Target) -> tuple[Tensor, Tensor, Goal]:
        """The LRP pass of ``x`` (``create_graph=False``), replayed where it can be."""
        modes, tensors, versions = model_state(self.model)
        key = self._key(x, target, modes)
        with self._lock:
            entry = None if key in self.eager else self.entries.get(key)
            current = entry is not None and entry.current(tensors, versions)
            if not current:
                self.check()  # before any pass but a replay
            if key in self.eager:
                return self._eager(x, target)
            if entry is not None and not current:  # weights changed in place or replaced
                self._drop(key)
                stale = self._stale[key] = self._stale.get(key, 0) + 1
                self.stats.stale[key] = self.stats.stale.get(key, 0) + 1
                if stale >= STALE_LIMIT:
                    return self._give_up(key, x, target, "the model's weights keep changing (training)")
                entry = None
            if entry is None and versions is None:
                return self._give_up(key, x, target, "the model holds tensors without a version counter")
            if entry is None:
                return self._capture(key, x, target, tensors, versions)
            self.entries.move_to_end(key)
            t = None if target is None else resolve_target(target, x.new_empty(x.shape[0], entry.classes))
            result = entry.run(x, t)
            if result is not None:
                self.stats.replays += 1
                self._stale.pop(key, None)
                return result
            misses = self.stats.mismatches[key] = self.stats.mismatches.get(key, 0) + 1
            if misses >= MISMATCH_LIMIT:
                return self._give_up(key, x, target, "inputs keep changing a rule's branch")
            return self._eager(x, target)

    def __getstate__(self) -> dict[str, Any]:
        """Copied (or pickled) without its captured passes, backends and lock (made again on use)."""
        state = dict(self.__dict__)
        state.update(entries=OrderedDict(), backends={}, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:  # noqa: D105
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Free every captured pass."""
        with self._lock:
            for key in list(self.entries):
                self._drop(key)

    # -- internals --------------------------------------------------------------------------------------
    def _key(self, x: Tensor, target: Target, modes: tuple[bool, ...]) -> tuple[Any, ...]:
        autocast = torch.is_autocast_enabled(x.device.type) if x.device.type in ("cuda", "cpu") else False
        return (tuple(x.shape), x.stride(), x.dtype, x.device, target is None, autocast, modes)

    def _eager(self, x: Tensor, target: Target) -> tuple[Tensor, Tensor, Goal]:
        self.stats.eager += 1
        return self.run(x, lambda output: resolve_goal(output, target, None), None)

    def _give_up(self, key: Any, x: Tensor, target: Target, why: str) -> tuple[Tensor, Tensor, Goal]:
        self.eager[key] = why
        LOG.warning("medlrp: LRP passes of input %s run eagerly from now on: %s", _shape(key), why)
        return self._eager(x, target)

    def _capture(
        self,
        key: Any,
        x: Tensor,
        target: Target,
        tensors: tuple[Tensor, ...],
        versions: tuple[tuple[int, int], ...],
    ) -> tuple[Tensor, Tensor, Goal]:
        static_x = x.detach().clone()
        recorder = Recorder()
        result = self.run(static_x, lambda output: resolve_goal(output, target, None), recorder)
        relevance, output, goal = result
        self.stats.eager += 1
        if output.dim() != 2:
            self.eager[key] = "a segmentation output is not captured"
            LOG.info(
                "medlrp: LRP of input %s runs eagerly: a segmentation output is not captured", _shape(key)
            )
            return result
        static_target = None if target is None else goal.target.clone()
        values = recorder.values

        def step() -> Outputs:
            reads = Replayer(values)
            goal_of = _argmax if static_target is None else (lambda output: Goal(static_target))
            r, out, g = self.run(static_x, goal_of, reads)
            return r, out, g.target, reads.guard()

        backend = self.backend
        if backend is None:
            if x.device not in self.backends:
                self.backends[x.device] = default_backend(x.device)
            backend = self.backends[x.device]
        while len(self.entries) >= self.limit:
            self._drop(next(iter(self.entries)))
            self.stats.evictions += 1
        try:
            captured = backend.capture(step, x.device)
        except Exception as err:  # any failure to capture: this key runs eagerly, the user gets the result
            first = str(err).splitlines()[0] if str(err) else ""
            self.eager[key] = f"the {backend.name} capture failed ({type(err).__name__}: {first})"
            LOG.warning("medlrp: LRP passes of input %s run eagerly: %s", _shape(key), self.eager[key])
            if isinstance(err, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            return result
        self.entries[key] = Entry(
            static_x, static_target, captured, tensors, versions, output.shape[1], backend.name
        )
        self.stats.captures += 1
        return result

    def _drop(self, key: Any) -> None:
        entry = self.entries.pop(key)
        entry.captured.free()


def _argmax(output: Tensor) -> Goal:
    return Goal(output.detach().argmax(dim=-1))


def _shape(key: tuple[Any, ...]) -> str:
    return "x".join(str(s) for s in key[0]) + f" ({key[2]}, {key[3]})"


def model_state(
    model: torch.nn.Module,
) -> tuple[tuple[bool, ...], tuple[Tensor, ...], tuple[tuple[int, int], ...] | None]:
    """Every module's train flag, the model's tensors and their ``(version, address)``, read once per call.

    The tensors: parameters, buffers, and the tensor attributes of modules whose class is not one of
    ``torch.nn``'s own (whose forwards read parameters and buffers only; skipping their attributes
    makes this 3x cheaper: about 0.2 ms for ResNet50 on a slow CPU). ``None`` for the versions when a
    tensor has no version counter (an inference tensor).
    """
    modules, seen = [model], {id(model)}
    modes: list[bool] = []
    tensors: list[Tensor] = []
    for module in modules:  # breadth first, each module once (as model.modules(), in another order)
        d = module.__dict__
        modes.append(module.training)
        for child in d["_modules"].values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                modules.append(child)
        tensors += [t for t in d["_parameters"].values() if t is not None]
        tensors += [t for t in d["_buffers"].values() if t is not None]
        if _own_class(type(module)):
            tensors += [v for v in d.values() if isinstance(v, Tensor)]
    try:
        versions = tuple([(t._version, t.data_ptr()) for t in tensors])
    except RuntimeError:
        return tuple(modes), tuple(tensors), None
    return tuple(modes), tuple(tensors), versions


_OWN: dict[type, bool] = {}


def _own_class(cls: type) -> bool:
    """Whether a module class is not one of ``torch.nn``'s own (its instances may read tensor attributes)."""
    own = _OWN.get(cls)
    if own is None:
        own = _OWN[cls] = not cls.__module__.startswith("torch.nn.")
    return own


__all__ = ["Backend", "Captured", "CudaGraphs", "Eager", "Replay", "default_backend", "model_state"]
