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
from medlrp.train.segmentation import SegmentationTask, check_masks
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
    #: The score per split: accuracy, or for segmentation the mean foreground Dice (see ``metric``).
    accuracy: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    task: str = "classification"
    metric: str = "accuracy"


@dataclass
class FolderSplits:
    """The splits of a dataset folder, in memory."""

    classes: list[str]
    preprocessing: Preprocessing
    train: Batch
    val: Batch | None
    test: Batch | None


def load_splits(
    data: str | Path, preprocessing: Preprocessing | None = None, min_classes: int = 2
) -> FolderSplits:
    """Read ``data/{train,val,test}`` (val and test optional); a folder without splits is all train.

    The class list is the training split's; val/test use the same labels. ``min_classes``: class
    folders with cases the training split needs (1 for segmentation, where the masks are the labels).
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
    if len(set(train_ds.labels)) < min_classes:
        raise InputError(f"{train_ds.root}: training needs at least two classes with cases")
    return FolderSplits(
        train_ds.classes, train_ds.preprocessing, load_all(train_ds), sets["val"], sets["test"]
    )


def default_arch(dims: int, task: str = "classification") -> str:
    """``cnn2d`` for images, ``cnn3d`` for volumes (``unet2d`` / ``unet3d`` for segmentation)."""
    family = "unet" if task == "segmentation" else "cnn"
    return f"{family}{2 if dims == 2 else 3}d"


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
    init: LoadedModel,
    splits: FolderSplits,
    arch: str | None,
    options: Mapping[str, Any] | None,
    classes: list[str],
    task: str,
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
    if init.task != task:
        raise InputError(f"--init checkpoint is a {init.task} model, not a {task} model")
    if list(init.class_names) != list(classes):
        raise InputError(f"--init checkpoint's classes {init.class_names} differ from the data's {classes}")
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
    segmentation: SegmentationTask | None = None,
) -> TrainedModel:
    """:func:`train_on_folder` on splits already in memory (see :func:`load_splits`).

    ``init``: a loaded medlrp checkpoint to go on training (fine-tuning) instead of fresh weights; its
    architecture, classes and preprocessing must be the data's (load the splits with its preprocessing).
    Its model is trained in place.

    ``segmentation``: train a segmentation model instead (every case needs a mask; the loss is the
    task's unless ``loss_fn`` is given otherwise; scores are the mean foreground Dice; default
    architecture ``unet2d`` / ``unet3d``). The checkpoint records ``task: segmentation``.
    """
    config = config or TrainConfig()
    config.check()
    task = "classification" if segmentation is None else "segmentation"
    classes = list(splits.classes if segmentation is None else segmentation.class_names)
    score = accuracy if segmentation is None else segmentation.score
    if segmentation is not None:
        for split, batch in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            check_masks(batch, f"{split} split")
        if loss_fn is cross_entropy_loss:
            loss_fn = segmentation.loss_fn()
    if init is not None:
        model, arch, kwargs = _initial(init, splits, arch, arch_options, classes, task)
    else:
        arch = arch or default_arch(splits.preprocessing.dims, task)
        # The seed fixes the initial weights; the global random state is restored afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model, kwargs = build_model(arch, splits.preprocessing, len(classes), arch_options)
    history = fit(model, splits.train, config, splits.val, loss_fn, on_step, score)
    scores = {"train": score(model, splits.train, 64)}
    for name, batch in (("val", splits.val), ("test", splits.test)):
        if batch is not None:
            scores[name] = score(model, batch, 64)
    metric = "accuracy" if segmentation is None else "dice"
    result = TrainedModel(
        model, arch, kwargs, splits.preprocessing, classes, history, scores, task=task, metric=metric
    )
    if out is not None:
        info: dict[str, Any] = {
            metric: scores,
            "epochs": config.epochs,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "history": [
                {"epoch": e.epoch, **e.parts, f"val_{metric}": e.val_accuracy} for e in history.epochs
            ],
        }
        if segmentation is not None:
            info.update(seg_labels=segmentation.labels, dice_weight=segmentation.dice_weight)
        info.update(extra or {})
        result.checkpoint = save_checkpoint(
            out, model, arch, kwargs, splits.preprocessing, classes, info, task=task
        )
    return result
