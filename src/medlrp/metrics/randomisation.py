"""Model parameter randomisation test (Adebayo et al. 2018), on a deep copy of the model.

Layers are re-initialised one after another, from the output towards the input by default (cascading);
after each, the map is recomputed and compared with the map of the trained model. A map that stays
similar while the weights are destroyed does not explain the model.

Mapping to Quantus 0.6.0 (tested to agree): ``randomization_check(model, x, y, explain_fn,
similarity="spearman", order=o, seed=s, abs=a)`` equals ``quantus.MPRT(similarity_func=
quantus.similarity_func.correlation_spearman, layer_order=o, seed=s, abs=a, normalise=False)`` with
``explain_func`` computing the same maps, for every layer key (Quantus names the root module ``""``, we
``"(model)"``). Both re-initialise every module that has ``reset_parameters`` after
``torch.manual_seed(seed + 1)``; we do it inside ``torch.random.fork_rng`` so the caller's random state is
untouched. Quantus's ``ssim`` compares flattened maps; ours compares them over their spatial axes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from medlrp.errors import InputError
from medlrp.metrics._common import check_batch, inference_mode_of, predict
from medlrp.metrics.similarity import SIMILARITIES
from medlrp.targets import Target, resolve_target

ExplainFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _explainer(method: str | ExplainFn, options: dict[str, object]) -> ExplainFn:
    if callable(method):
        return method
    from medlrp.api import explain  # late: the facade imports this package

    def run(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return explain(model, x, target, method=method, **options).relevance  # type: ignore[arg-type]

    return run


def _prepare(a: torch.Tensor, similarity: str | Similarity, use_abs: bool) -> torch.Tensor:
    a = a.detach()
    if use_abs:
        a = a.abs()
    if similarity == "ssim":
        return a.sum(dim=1)  # SSIM runs over the spatial axes; channels are summed
    return a


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise InputError(f"the model cannot be deep-copied for randomisation ({why})") from None


def randomization_check(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: Target = None,
    method: str | ExplainFn = "gradient",
    *,
    similarity: str | Similarity = "spearman",
    order: str = "top_down",
    seed: int = 42,
    abs: bool = True,
    **options: object,
) -> dict[str, torch.Tensor]:
    """Similarity between the maps of the model and of increasingly randomised copies, per layer.

    Args:
        model: The trained classifier; never changed (a deep copy is randomised).
        x: Input batch, 2D or 3D.
        target: Class per sample; ``None`` takes the trained model's argmax (kept for every copy).
        method: A registered method name (``"lrp"``, ``"gradcam"``, ...), or a callable
            ``(model, x, target) -> relevance``.
        similarity: ``"spearman"`` (rank correlation of the flattened maps), ``"pearson"``, ``"ssim"``
            (over the spatial axes, channels summed), or a callable ``(a, b) -> (N,)``.
        order: ``"top_down"`` (cascading from the output layer), ``"bottom_up"`` (cascading from the
            input) or ``"independent"`` (one layer at a time, the others trained).
        seed: Seed of the re-initialisation (``torch.manual_seed(seed + 1)`` before each layer).
        abs: Compare ``|R|`` (as Quantus's default and Adebayo et al.'s absolute maps).
        **options: Options of the method (``composite=``, ``layer=``, ...).

    Returns:
        ``{layer name: (N,) similarity}`` in the order the layers were randomised.
    """
    check_batch(x)
    if order not in ("top_down", "bottom_up", "independent"):
        raise InputError(f"unknown order {order!r}; expected 'top_down', 'bottom_up' or 'independent'")
    sim = SIMILARITIES.get(similarity) if isinstance(similarity, str) else similarity
    if sim is None:
        raise InputError(f"unknown similarity {similarity!r}; known: {', '.join(SIMILARITIES)}")
    explain_fn = _explainer(method, options)
    with inference_mode_of(model):
        t = resolve_target(target, predict(model, x, softmax=False))
    # The reference map is computed on a copy as well: a method may run the model in training mode
    # (BatchNorm statistics) or leave state behind; the user's model is only ever forwarded above.
    reference = _prepare(explain_fn(_copy(model), x, t), similarity, abs)
    twin = _copy(model)
    layers = [(name or "(model)", m) for name, m in twin.named_modules() if hasattr(m, "reset_parameters")]
    if not layers:
        raise InputError("the model has no layer with reset_parameters() to randomise")
    if order == "top_down":
        layers = layers[::-1]
    trained = {k: v.detach().clone() for k, v in twin.state_dict().items()}
    devices = sorted({p.device.index or 0 for p in twin.parameters() if p.device.type == "cuda"})
    result: dict[str, torch.Tensor] = {}
    for name, module in layers:
        if order == "independent":
            twin.load_state_dict(trained)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + 1)
            module.reset_parameters()  # type: ignore[operator]
        a = _prepare(explain_fn(twin, x, t), similarity, abs)
        result[name] = sim(reference, a)
    return result
