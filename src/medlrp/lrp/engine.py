"""The per-call interception: a ``TorchFunctionMode`` that writes LRP rules into the model's forward pass.

Nothing global is touched: the mode is thread-local and active only while medlrp runs the model's
forward; no hooks are registered, no parameter is swapped, no class is patched.

Every tensor that carries relevance (the input and everything computed from it by handled operations)
is *tracked*: it has a :class:`Node` in the attribute ``_medlrp_node``. An operation on tracked tensors
is dispatched to the handler registered for its torch function (see :mod:`medlrp.lrp.handlers`); an
operation on untracked tensors only runs unchanged; a floating-point operation on tracked tensors with
no handler raises :class:`~medlrp.errors.UnsupportedLayerError` naming the module and its type.

Two modes:

* fast (``dual=False``): the tensor the model sees *is* the routed tensor (true value, LRP gradient).
  One forward, one ordinary backward.
* dual (``dual=True``, for ``create_graph=True``): the model sees the true tensors with their ordinary
  graph; each node also holds a *routed* twin (same value) whose graph is the LRP backward. Every
  value-dependent coefficient (denominators, ratios, gates) is computed from the true tensors *with*
  their graph, so the relevance ``x * grad`` has exact derivatives w.r.t. parameters and input. (This is
  the two-pass scheme of the design folded into one forward: both graphs are built side by side, so
  no matching of operations between passes is needed.)
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from medlrp.errors import InputError, MedlrpError, UnsupportedLayerError
from medlrp.lrp.products import WEIGHTS
from medlrp.lrp.reads import Read
from medlrp.lrp.route import settle

_ATTR = "_medlrp_node"
_INPLACE = re.compile(r"^__i(add|sub|mul|truediv|floordiv|mod|pow|and|or|xor|lshift|rshift|matmul)__$")

#: Handler signature: ``handler(engine, func, args, kwargs) -> result``. See :mod:`medlrp.lrp.handlers`.
Handler = Callable[["Engine", Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


def deferring(handler: Handler) -> Handler:
    """Mark a handler that takes a route's output without needing that route's coefficients.

    A BatchNorm merged into the linear layer before it routes the merged output instead; shapes and
    constants read no values. Before any other handler runs, the fast path computes the pending
    coefficients of its inputs' routes, so the values they need (layer outputs, products) are freed
    during the forward pass instead of being kept for the backward pass.
    """
    handler.defers = True  # type: ignore[attr-defined]
    return handler


class Node:
    """What the engine knows about a tracked tensor.

    Attributes:
        engine: The engine call that produced it (tensors of other calls are not tracked here).
        routed: The routed twin (dual mode); ``None`` means the tensor is its own routed twin.
        linear: The :class:`~medlrp.lrp.linear.LinearCall` that produced it (for a BatchNorm merge).
        gate: Produced by a sigmoid-like op: a multiplicative gate when multiplied with another tensor.
        is_input: The model input itself (or a value-preserving copy), where reference rules may act.
        nonneg: Known to be >= 0 from how it was computed (a ReLU output, pooled or reshaped), which
            spares rules on signs the products for negative inputs without a check of the values.
    """

    __slots__ = ("engine", "routed", "linear", "gate", "is_input", "nonneg")

    def __init__(self, engine: Engine, routed: torch.Tensor | None) -> None:
        self.engine = engine
        self.routed = routed
        self.linear: Any = None
        self.gate = False
        self.is_input = False
        self.nonneg = False


class Engine(TorchFunctionMode):
    """One LRP forward pass of one model.

    Attributes:
        dual: Build the true graph beside the routed one (``create_graph=True``).
        handlers: Torch function -> handler.
        rules: ``rules(func_kind, name, module)`` -> rule for a layer (from the composite).
        references: Leaves standing for reference inputs (low, high, ones) created during the pass, as
            ``(true value, routed leaf)``; the final relevance adds ``true * grad(leaf)``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        handlers: dict[Any, Handler],
        select_rule: Callable[[str, str, torch.nn.Module | None], Any],
        dual: bool,
        options: dict[str, Any],
        weights: WeightCache | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.handlers = handlers
        self.select_rule = select_rule
        self.dual = dual
        self.options = options
        self.references: list[tuple[torch.Tensor, torch.Tensor]] = []
        #: The leaf standing for the model input in the routed graph.
        self.routed_input: torch.Tensor | None = None
        #: Clamped weights with their graph, once per pass (dual mode only).
        self.cache: dict[tuple[int, str], torch.Tensor] = {}
        #: The explainer's store of derived weights kept between passes (the ViT fast path's ``k |W|``).
        self.weights = None if dual else weights
        self._tracked: list[weakref.ref[torch.Tensor]] = []
        #: How :meth:`flag` reads a value a rule branches on (``None``: a plain host read; see
        #: :mod:`medlrp.lrp.reads`).
        self.reads: Read | None = None
        #: The first error a rule raised in this pass (see :meth:`__exit__`).
        self.failure: MedlrpError | None = None
        self._stack: list[tuple[str, torch.nn.Module]] = []
        self._params: dict[int, tuple[torch.Tensor, str, torch.nn.Module]] = {}
        self._modules: dict[int, tuple[str, torch.nn.Module]] = {}
        for name, module in model.named_modules():
            self._modules[id(module)] = (name, module)
            for param in module.parameters(recurse=False):
                self._params[id(param)] = (param, name, module)
            for buf in module.buffers(recurse=False):
                self._params.setdefault(id(buf), (buf, name, module))

    # -- dispatch ---------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if not self._any_tracked(args) and not self._any_tracked(kwargs.values()):
            return func(*args, **kwargs)
        handler = self.handlers.get(func)
        if handler is not None:
            if not self.dual and not getattr(handler, "defers", False):
                self._settle(args)
                self._settle(kwargs.values())
            try:
                return handler(self, func, args, kwargs)
            except Exception as err:
                raise self._failed(func, args, kwargs, err) from None
        try:
            return self._unhandled(func, args, kwargs)
        except MedlrpError as err:
            self.failure = self.failure or err
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:  # noqa: D105
        super().__exit__(exc_type, exc, tb)
        # torch turns a TypeError raised inside ``Tensor.__mul__`` and the other operators into
        # ``NotImplemented``, and Python then raises its own "unsupported operand" TypeError (an
        # UnsupportedLayerError is a TypeError): the rule's own error is the one to report
        if exc is not None and self.failure is not None and exc is not self.failure:
            raise self.failure from None

    def _failed(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], err: Exception) -> Exception:
        """The error to raise for a handler of ``func`` that raised ``err``, recorded as the pass's failure.

        medlrp's own errors stay as they are (also its ``RuntimeError`` on a tensor changed in place);
        any other error is the model's own when the plain operation fails too (a wrong input shape),
        else a rule's failure, reported as an :class:`~medlrp.errors.UnsupportedLayerError` naming the
        module, its type and the operation.
        """
        if str(err).startswith("medlrp:"):
            return err
        if not isinstance(err, MedlrpError):
            name = _func_name(func)
            if not name.endswith("_"):  # never re-run an in-place operation
                try:
                    func(*args, **kwargs)
                except Exception:
                    return err
            err = self.unsupported(f"the relevance rule of {name!r} failed ({type(err).__name__}: {err})")
        self.failure = self.failure or err
        return err

    def _settle(self, values: Any) -> None:
        for v in values:
            if isinstance(v, torch.Tensor):
                if self.node(v) is not None:
                    settle(v)
            elif isinstance(v, (list, tuple)):
                self._settle(v)

    def _any_tracked(self, values: Any) -> bool:
        for v in values:
            if isinstance(v, torch.Tensor):
                if self.node(v) is not None:
                    return True
            elif isinstance(v, (list, tuple)):
                if self._any_tracked(v):
                    return True
        return False

    def _unhandled(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = getattr(func, "__name__", "")
        if name == "__setitem__" or _INPLACE.match(name) or (name.endswith("_") and not name.endswith("__")):
            # an in-place write into a tracked tensor would change relevance behind the rules' back
            raise self.unsupported(f"in-place operation {_func_name(func)!r} has no relevance rule")
        result = func(*args, **kwargs)
        if any(t.is_floating_point() or t.is_complex() for t in _tensors(result)):
            raise self.unsupported(f"operation {_func_name(func)!r} has no relevance rule")
        return result  # shapes, sizes, comparisons, indices: no relevance flows through them

    # -- tracking ---------------------------------------------------------------------------------------
    def node(self, t: torch.Tensor) -> Node | None:
        """The node of ``t`` if this engine tracks it."""
        node = t.__dict__.get(_ATTR) if hasattr(t, "__dict__") else None
        return node if node is not None and node.engine is self else None

    def routed(self, t: Any) -> Any:
        """``t``'s routed twin (``t`` itself in fast mode or when untracked); recurses into lists/tuples."""
        if isinstance(t, torch.Tensor):
            node = self.node(t)
            return t if node is None or node.routed is None else node.routed
        if isinstance(t, (list, tuple)):
            return type(t)(self.routed(v) for v in t)
        return t

    def track(self, true: torch.Tensor, routed: torch.Tensor | None = None) -> Node:
        """Mark ``true`` as carrying relevance; ``routed`` is its twin in dual mode."""
        if self.dual and routed is None:
            raise RuntimeError("dual mode needs the routed twin")
        node = Node(self, routed if self.dual else None)
        true.__dict__[_ATTR] = node
        self._tracked.append(weakref.ref(true))
        return node

    def release(self) -> None:
        """Remove every node from the tensors of this pass.

        torch keeps a tensor's Python object (and its ``__dict__``) alive while the C++ tensor is
        referenced, e.g. saved in a graph; a node reaching back into that graph would be a cycle the
        garbage collector cannot see. Called when the pass is over, also after an exception.
        """
        for ref in self._tracked:
            t = ref()
            if t is not None:
                t.__dict__.pop(_ATTR, None)
        self._tracked.clear()
        self.failure = None
        self.references = []
        self.routed_input = None
        self.cache.clear()

    # -- layers -----------------------------------------------------------------------------------------
    def layer_of(self, param: torch.Tensor | None) -> tuple[str, torch.nn.Module | None]:
        """The module owning parameter/buffer ``param`` (by identity), else the module now running."""
        entry = self._params.get(id(param)) if param is not None else None
        if entry is not None and entry[0] is param:
            return entry[1], entry[2]
        return self.current_module()

    def current_module(self) -> tuple[str, torch.nn.Module | None]:
        """The innermost module of the model being called (see :meth:`running`)."""
        return self._stack[-1] if self._stack else ("", None)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Track which module of the model runs, for :meth:`current_module`.

        Global module hooks, registered for the call only and acting only on this thread and on the
        model's own modules: the model itself is not touched.
        """
        thread, modules, stack = threading.get_ident(), self._modules, self._stack

        def pre(module: torch.nn.Module, args: Any) -> None:
            entry = modules.get(id(module))
            if entry is not None and entry[1] is module and threading.get_ident() == thread:
                stack.append(entry)

        def post(module: torch.nn.Module, args: Any, output: Any) -> None:
            if stack and stack[-1][1] is module and threading.get_ident() == thread:
                stack.pop()

        hooks = torch.nn.modules.module
        handles = [
            hooks.register_module_forward_pre_hook(pre),
            hooks.register_module_forward_hook(post, always_call=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            stack.clear()

    def unsupported(self, what: str) -> UnsupportedLayerError:
        """An :class:`UnsupportedLayerError` naming the running module (dotted name) and its type."""
        name, module = self.current_module()
        where = f"module {name or '<root>'!r} ({type(module).__name__})" if module is not None else "model"
        return UnsupportedLayerError(f"{where}: {what}")

    def input_error(self, what: str) -> InputError:
        """An :class:`InputError` naming the running module."""
        name, module = self.current_module()
        where = f"module {name or '<root>'!r} ({type(module).__name__})" if module is not None else "model"
        return InputError(f"{where}: {what}")

    # -- helpers for handlers ---------------------------------------------------------------------------
    def is_model_input(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is the model input (or a value-preserving copy of it)."""
        node = self.node(t)
        return node is not None and node.is_input

    def flag(self, condition: torch.Tensor) -> bool:
        """The value of ``condition`` (a 0-dim bool tensor) that a rule branches on.

        Every host read of a tensor's value in a rule goes through here, so that a captured pass can
        take the recorded value instead (see :mod:`medlrp.lrp.reads`).
        """
        return bool(condition) if self.reads is None else self.reads(condition)

    def reference(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """A leaf standing for a reference input (low, high, ones): returns the routed leaf.

        The final relevance adds ``value * grad(leaf)``; ``value`` may carry a graph (dual mode).
        """
        leaf = value.detach().clone().requires_grad_(True)
        self.references.append((value, leaf))
        return leaf

    def weight_part(self, weight: torch.Tensor, kind: str) -> torch.Tensor:
        """The weight modified by ``kind`` (see :data:`~medlrp.lrp.products.WEIGHTS`: ``"W+"``, ``"|W|"``...).

        Dual mode: computed once per pass, with its graph. Fast path: detached, never kept.
        """
        if not self.dual:
            return WEIGHTS[kind](weight.detach())
        key = (id(weight), kind)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = WEIGHTS[kind](weight)
        return hit

    def derived_weight(self, weight: torch.Tensor, k: float) -> torch.Tensor:
        """``k |W|``, kept between the explainer's passes where it has a :class:`WeightCache`."""
        if self.weights is None:
            return weight.detach().abs().mul_(k)
        return self.weights.get(weight, k)


class WeightCache:
    """The per-explainer store of derived weights (the ViT fast path's ``k |W|``), kept between calls.

    An entry is valid while the weight object, its version counter and its storage address are unchanged.
    """

    def __init__(self) -> None:
        self.entries: dict[
            tuple[int, float], tuple[weakref.ref[torch.Tensor], tuple[int, int], torch.Tensor]
        ] = {}

    def get(self, weight: torch.Tensor, k: float) -> torch.Tensor:
        """``k |W|`` for ``weight``, computed once per weight version."""
        key = (id(weight), k)
        entry = self.entries.get(key)
        version = (weight._version, weight.data_ptr())
        if entry is not None and entry[0]() is weight and entry[1] == version:
            return entry[2]
        value = weight.detach().abs().mul_(k)
        self.entries[key] = (weakref.ref(weight), version, value)
        return value


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    owner = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
    if owner is not None and hasattr(owner, "__name__") and owner.__name__ not in ("_C", "torch"):
        return f"{owner.__name__}.{name}"
    return name
