"""Which layer a CAM looks at: a module or a dotted name, or a default found by one probe pass.

Classifiers (output ``(N, classes)``): the default is the last convolutional block of a CNN (the last
module, in the order the forward pass finishes them, whose output is a feature map like the input with
more than one position), or the last transformer block of a ViT whose patch tokens still reach the
output. The latter matters for ViTs with a class-token head: the last block's patch tokens never reach
the logits (their gradient is exactly zero), so the default there is the penultimate block; with a
mean-pooling head it is the last block.

Segmentation networks (output ``(N, classes, *spatial)``): the default is the bottleneck, as Seg-Grad-CAM
(Vinogradova et al., AAAI 2020) takes it for a U-Net and pytorch-grad-cam's semantic-segmentation
tutorial takes the backbone's last stage of a DeepLabV3. The last feature map of a segmentation network
is the logits themselves (or a map one 1x1 convolution away from them): its Grad-CAM is positive where
the class's logit is, i.e. it redraws the predicted mask and says nothing about where the evidence
came from. The bottleneck is found by :func:`bottleneck`: among the feature maps (and transformer
blocks' tokens) of modules that run once, those with the fewest positions (more than one), and of
these the one with the most channels (the last of equals): the deepest features, not a 1x1
projection the decoder makes of them or logits computed before a functional upsampling. M3d-CAM's
``layer="auto"`` takes the last layer with a non-zero gradient instead, the output layer of a U-Net;
``layer=`` still picks any layer, the output layer included.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass

import torch

from medlrp.cam.guard import ThreadHook, explaining, logits
from medlrp.cam.tokens import GridRecorder, is_patchify
from medlrp.errors import InputError
from medlrp.region import is_segmentation

Layer = torch.nn.Module | str | tuple[torch.nn.Module | str, int] | None


def split_call(layer: Layer) -> tuple[torch.nn.Module | str | None, int | None]:
    """``(layer, call)`` from ``"name:K"`` or ``(layer, K)``; ``call`` is ``None`` when not given.

    ``K`` picks one call of a module that runs several times in a forward pass (0-based; negative
    counts from the end; the default is the last call).
    """
    if isinstance(layer, tuple):
        if len(layer) != 2 or not isinstance(layer[1], int):
            raise InputError(f"layer=(layer, call) needs a module or name and an integer, got {layer!r}")
        return layer[0], int(layer[1])
    if isinstance(layer, str) and ":" in layer:
        name, _, call = layer.rpartition(":")
        try:
            return name, int(call)
        except ValueError:
            raise InputError(
                f"layer {layer!r}: the part after ':' must be a call number (0, 1, ..., -1)"
            ) from None
    return layer, None


def count_calls(model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor) -> int:
    """How many times ``module`` runs in one forward pass of ``x[:1]`` (eval mode, no graph)."""
    calls = [0]

    def count(m: torch.nn.Module, inputs: object, output: object) -> None:
        calls[0] += 1

    with explaining(model) as hooks, torch.no_grad():
        hooks.append(module.register_forward_hook(ThreadHook(count)))
        model(x[:1].detach())
    return calls[0]


def resolve_layer(model: torch.nn.Module, layer: Layer, x: torch.Tensor) -> tuple[str, torch.nn.Module]:
    """Return ``(dotted name, module)`` for ``layer``; ``None`` picks the default for ``model``.

    Dotted names may index containers with integers, also negative ones (``"layer4.-1"``); a call
    number (``"name:K"``) is split off first by :func:`split_call`.
    """
    if layer is None:
        layer = default_layer(model, x)
    if isinstance(layer, str):
        return layer, find_layer(model, layer)
    if isinstance(layer, torch.nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise InputError(f"layer {type(layer).__name__} is not a submodule of the model")
    raise InputError(f"layer must be a module or a dotted name, got {type(layer).__name__}")


def find_layer(model: torch.nn.Module, name: str, what: str = "layer") -> torch.nn.Module:
    """The submodule of ``model`` a dotted ``name`` names (a ``":K"`` call suffix is ignored).

    Containers may be indexed with integers, also negative ones (``"layer4.-1"``). A layer inside a
    TorchScript module is refused: TorchScript takes no hooks.

    Raises:
        InputError: One line naming ``name`` (as ``what`` says, e.g. ``--layer``), where the walk stopped
            and the closest existing names.
    """
    module = model
    path = split_call(name)[0] if ":" in name else name
    assert isinstance(path, str)
    for i, part in enumerate(path.split(".") if path else []):
        children = dict(module.named_children())
        child = children.get(part)
        if (
            child is None
            and part.lstrip("-").isdigit()
            and isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList))
        ):
            index = int(part)
            if -len(module) <= index < len(module):
                child = module[index]
        if child is None:
            where = ".".join(path.split(".")[:i]) or "the model"
            raise InputError(
                f"{what} {name!r}: {where} ({type(module).__name__}) has no submodule {part!r}"
                f"{_close_names(model, path, module)}"
            )
        module = child
    if isinstance(module, torch.jit.ScriptModule):
        raise InputError(
            f"{what} {name!r} is TorchScript ({module.original_name}), which takes no hooks: a CAM cannot "
            "read its activations; explain the Python model, or use a gradient method"
        )
    return module


def _close_names(model: torch.nn.Module, name: str, stopped: torch.nn.Module) -> str:
    """``"; close: a, b"``: the module names nearest to ``name``, else those under ``stopped``.

    ``stopped`` is the module where the walk along ``name`` found no child of the next name.
    """
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    if close:
        return f"; close: {', '.join(close)}"
    prefix = next((f"{n}." for n, m in model.named_modules() if m is stopped and n), "")
    children = [prefix + n for n, _ in stopped.named_children()]
    more = f", ... ({len(children)} in all)" if len(children) > 8 else ""
    return f"; its submodules: {', '.join(children[:8])}{more}" if children else ""


@dataclass
class _Record:
    name: str
    ndim: int
    positions: int
    is_block: bool
    tensor: torch.Tensor


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _block_names(model: torch.nn.Module) -> set[str]:
    """Names of the repeated blocks: children of a Sequential/ModuleList whose children share a class."""
    names = set()
    for parent_name, parent in model.named_modules():
        if isinstance(parent, (torch.nn.Sequential, torch.nn.ModuleList)) and len(parent) >= 2:
            kinds = {type(child) for child in parent.children()}
            if len(kinds) == 1:
                prefix = f"{parent_name}." if parent_name else ""
                names.update(prefix + child_name for child_name in parent._modules)
    return names


def default_layer(model: torch.nn.Module, x: torch.Tensor) -> str:
    """The default CAM layer's dotted name, found by one forward (and for ViTs one backward) of ``x[:1]``.

    The probe runs in eval mode and leaves the model as it was (see :func:`medlrp.cam.guard.explaining`).
    """
    blocks = _block_names(model)
    records: list[_Record] = []
    grid = GridRecorder()

    def recorder(name: str):  # noqa: ANN202 - a hook factory
        def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
            t = _first_tensor(output)
            if t is not None and t.ndim >= 3:
                positions = int(torch.tensor(t.shape[2:]).prod()) if t.ndim == x.ndim else t.shape[1]
                records.append(_Record(name, t.ndim, positions, name in blocks, t))

        return hook

    with explaining(model) as hooks:  # eval mode: the probe must not update BatchNorm statistics
        for name, module in model.named_modules():
            if name and not isinstance(module, torch.jit.ScriptModule):  # TorchScript takes no hooks
                hooks.append(module.register_forward_hook(ThreadHook(recorder(name))))
            if is_patchify(module):
                hooks.append(module.register_forward_hook(ThreadHook(grid)))
        with torch.enable_grad():
            out = logits(model(x[:1].detach().requires_grad_()))

    spatial = [i for i, r in enumerate(records) if r.ndim == x.ndim]
    wide = [i for i in spatial if records[i].positions > 1]
    tokens = [i for i, r in enumerate(records) if r.ndim == 3 and x.ndim != 3 and r.is_block]
    if is_segmentation(out) and (wide or tokens):  # a segmentation network: its bottleneck
        found = bottleneck(records, [*wide, *tokens])
        if found is not None:
            return found
    if tokens and (not spatial or tokens[-1] > spatial[-1]):
        return _last_reaching_block([records[i] for i in tokens], out, grid.grid)
    if wide or spatial:
        return records[(wide or spatial)[-1]].name
    raise InputError("no layer of the model outputs a feature map or tokens; pass layer= explicitly")


def bottleneck(records: list[_Record], candidates: list[int]) -> str | None:
    """The bottleneck among ``records[candidates]`` (feature maps and token blocks, in finishing order).

    Modules that ran more than once in the probe (one activation module shared by many blocks) are left
    out: their default call could lie at another resolution. Of the rest, those with the fewest
    positions (more than one); of these the one with the most channels, the last of equals. ``None``
    when no candidate is left.
    """
    runs = Counter(r.name for r in records)
    once = [records[i] for i in candidates if runs[records[i].name] == 1 and records[i].positions > 1]
    if not once:
        return None
    fewest = min(r.positions for r in once)
    coarsest = [r for r in once if r.positions == fewest]
    channels = [r.tensor.shape[1] if r.ndim != 3 else r.tensor.shape[2] for r in coarsest]
    return coarsest[max(range(len(coarsest)), key=lambda k: (channels[k], k))].name


def _last_reaching_block(blocks: list[_Record], out: torch.Tensor, grid: tuple[int, ...] | None) -> str:
    """The last block whose patch tokens have a non-zero gradient of the top logit."""
    tensors = [r.tensor for r in blocks]
    if not out.requires_grad or grid is None:
        return blocks[-1].name
    score = out[0, out[0].argmax()]
    grads = torch.autograd.grad(score, tensors, allow_unused=True)
    patches = int(torch.tensor(grid).prod())
    for record, g in zip(reversed(blocks), reversed(grads), strict=True):
        if g is not None and g[:, g.shape[1] - patches :].abs().sum() > 0:
            return record.name
    return blocks[-1].name
