"""Training from a dataset folder to a checkpoint: what ``medlrp train`` and ``medlrp demo`` run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlrp.data.folder import Batch, FolderDataset, resolve_split
from medlrp.errors import InputError
from medlrp.models.checkpoint import LoadedModel, save_checkpoint
from medlrp.models.preprocessing import Preprocessing
from medlrp.registry import ARCHITECTURES
from medlrp.train.loop import History, StepCallback, TrainConfig, accuracy, fit
from medlrp.train.losses import LossFn, cross_entropy_loss
from medlrp.train.tensors import load_all


@dataclass
class TrainedModel:
    """The outcome of :func:`train_on_folder`."""

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any]
    preprocessing: Preprocessing
    class_names: list[str]
    history: History
    accuracy: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


@dataclass
class FolderSplits:
    """The splits of a dataset folder, in memory."""

    classes: list[str]
    preprocessing: Preprocessing
    train: Batch
    val: Batch | None
    test: Batch | None


def load_splits(data: str | Path, preprocessing: Preprocessing | None = None) -> FolderSplits:
    """Read ``data/{train,val,test}`` (val and test optional); a folder without splits is all train.

    The class list is the training split's; val/test use the same labels.
    """
    root = Path(data)
    if not (root / "train").is_dir() and any((root / s).is_dir() for s in ("val", "test")):
        raise InputError(f"{root}: has val/test splits but no train split to train on")
    train_ds = FolderDataset(root, split="train", preprocessing=preprocessing)
    sets: dict[str, Batch | None] = {"val": None, "test": None}
    for split in sets:
        folder = resolve_split(root, split)
        if folder != root and folder != train_ds.root:
            ds = FolderDataset(
                root, split=split, preprocessing=train_ds.preprocessing, classes=train_ds.classes
            )
            sets[split] = load_all(ds)
    if len(set(train_ds.labels)) < 2:
        raise InputError(f"{train_ds.root}: training needs at least two classes with cases")
    return FolderSplits(
        train_ds.classes, train_ds.preprocessing, load_all(train_ds), sets["val"], sets["test"]
    )


def default_arch(dims: int) -> str:
    """``cnn2d`` for images, ``cnn3d`` for volumes."""
    return "cnn2d" if dims == 2 else "cnn3d"


def build_model(
    arch: str,
    preprocessing: Preprocessing,
    num_classes: int,
    options: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Instantiate a registered architecture for this input; return it and its factory kwargs.

    Args:
        arch: Registered architecture name.
        preprocessing: The input the model will see (channels, size).
        num_classes: Output classes.
        options: More keyword arguments of the factory (e.g. ``{"stem": 2, "pool": "mean"}`` for
            ``vit2d``); they are stored in the checkpoint with the rest.

    Raises:
        InputError: Unknown architecture or option, or one that cannot take this input (e.g. ``cnn2d``
            on volumes).
    """
    factory = ARCHITECTURES.get(arch)
    kwargs: dict[str, Any] = {"in_channels": preprocessing.channels, "num_classes": num_classes}
    if arch.startswith("vit"):
        kwargs["image_size"] = list(preprocessing.size)
    fixed = set(kwargs) & set(options or {})
    if fixed:
        raise InputError(f"architecture option(s) {sorted(fixed)} are set from the data, not by hand")
    kwargs.update(options or {})
    try:
        model = factory(**kwargs)
        assert isinstance(model, nn.Module)
        with torch.no_grad():
            model.eval()(torch.zeros(2, preprocessing.channels, *preprocessing.size))
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"architecture {arch!r} cannot take {preprocessing.dims}D input of size {preprocessing.size} "
            f"with {preprocessing.channels} channel(s) ({first})"
        ) from None
    return model, kwargs


def _initial(
    init: LoadedModel, splits: FolderSplits, arch: str | None, options: Mapping[str, Any] | None
) -> tuple[nn.Module, str, dict[str, Any]]:
    """The model, architecture and factory kwargs of ``init``, checked against the data and options.

    Raises:
        InputError: ``init`` is not a medlrp checkpoint, or does not fit the data or the options.
    """
    if init.arch in ("torchscript", "pickle", "unknown"):
        raise InputError(
            f"--init needs a medlrp checkpoint (architecture and weights), not a {init.arch} model"
        )
    if arch is not None and arch != init.arch:
        raise InputError(f"--arch {arch} differs from the --init checkpoint's architecture {init.arch}")
    if options:
        raise InputError("--arch-option cannot change an --init checkpoint's architecture")
    if list(init.class_names) != list(splits.classes):
        raise InputError(
            f"--init checkpoint's classes {init.class_names} differ from the data's {splits.classes}"
        )
    if init.preprocessing != splits.preprocessing:
        raise InputError("--init: load the data with the checkpoint's preprocessing")
    return init.model, init.arch, dict(init.arch_kwargs)


def train_on_folder(
    data: str | Path,
    out: str | Path | None,
    arch: str | None = None,
    config: TrainConfig | None = None,
    loss_fn: LossFn = cross_entropy_loss,
    on_step: StepCallback | None = None,
    extra: dict[str, Any] | None = None,
    arch_options: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Train a registered architecture on a dataset folder and write a checkpoint.

    Args:
        data: Dataset folder (``{train,val,test}/<class>/<case>.<ext>``, or class folders only).
        out: Checkpoint path (``None``: do not write one).
        arch: Architecture name; default ``cnn2d`` / ``cnn3d`` by the data's dimensionality.
        config: Optimisation settings (seed included).
        loss_fn: The training loss seam (plain cross-entropy by default).
        on_step: Progress callback (see :func:`medlrp.train.loop.fit`).
        extra: More entries for the checkpoint's ``extra`` dict.
        arch_options: More keyword arguments of the architecture's factory (see :func:`build_model`).

    Returns:
        The trained model (eval mode), its accuracies on train/val/test, and the checkpoint path.
    """
    info = {"data": str(data), **(extra or {})}
    return train_on_splits(load_splits(data), out, arch, config, loss_fn, on_step, info, arch_options)


def train_on_splits(
    splits: FolderSplits,
    out: str | Path | None,
    arch: str | None = None,
    config: TrainConfig | None = None,
    loss_fn: LossFn = cross_entropy_loss,
    on_step: StepCallback | None = None,
    extra: dict[str, Any] | None = None,
    arch_options: Mapping[str, Any] | None = None,
    init: LoadedModel | None = None,
) -> TrainedModel:
    """:func:`train_on_folder` on splits already in memory (see :func:`load_splits`).

    ``init``: a loaded medlrp checkpoint to go on training (fine-tuning) instead of fresh weights; its
    architecture, classes and preprocessing must be the data's (load the splits with its preprocessing).
    Its model is trained in place.
    """
    config = config or TrainConfig()
    config.check()
    if init is not None:
        model, arch, kwargs = _initial(init, splits, arch, arch_options)
    else:
        arch = arch or default_arch(splits.preprocessing.dims)
        # The seed fixes the initial weights; the global random state is restored afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model, kwargs = build_model(arch, splits.preprocessing, len(splits.classes), arch_options)
    history = fit(model, splits.train, config, val=splits.val, loss_fn=loss_fn, on_step=on_step)
    scores = {"train": accuracy(model, splits.train)}
    for name, batch in (("val", splits.val), ("test", splits.test)):
        if batch is not None:
            scores[name] = accuracy(model, batch)
    result = TrainedModel(model, arch, kwargs, splits.preprocessing, splits.classes, history, scores)
    if out is not None:
        info = {
            "accuracy": scores,
            "epochs": config.epochs,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "history": [
                {"epoch": e.epoch, **e.parts, "val_accuracy": e.val_accuracy} for e in history.epochs
            ],
        }
        info.update(extra or {})
        result.checkpoint = save_checkpoint(
            out, model, arch, kwargs, splits.preprocessing, splits.classes, info
        )
    return result
