"""``medlrp train``: train a registered architecture on a dataset folder and write a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medlrp.commands import options as opt
from medlrp.errors import InputError

if TYPE_CHECKING:  # imported when the command runs: --help must not import torch
    from medlrp.models.checkpoint import LoadedModel
    from medlrp.train.folder import FolderSplits, TrainedModel
    from medlrp.train.loop import TrainConfig
    from medlrp.train.losses import LossFn
    from medlrp.train.segmentation import SegmentationTask


def run_train(
    data: Path,
    out: Path | None,
    arch: str | None,
    config: TrainConfig,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    extra: dict[str, Any] | None = None,
    arch_options: dict[str, Any] | None = None,
    splits: FolderSplits | None = None,
    init: LoadedModel | None = None,
    segmentation: SegmentationTask | None = None,
) -> TrainedModel:
    """Training with a progress bar (see :func:`medlrp.train.train_on_folder`).

    ``splits``: ``data`` already loaded (:func:`medlrp.train.folder.load_splits`), or ``None``;
    ``loss_fn`` None: cross-entropy. ``segmentation``: train a segmentation model (see
    :func:`medlrp.train.folder.train_on_splits`).
    """
    from medlrp.train.folder import load_splits, train_on_splits
    from medlrp.train.losses import cross_entropy_loss
    from medlrp.train.progress import training_progress

    config.check()
    opt.check_architecture(arch)  # an unknown name is reported before a progress bar appears
    if splits is None:
        splits = load_splits(data)  # bad data is reported before a progress bar appears
    with training_progress(config.epochs, enabled=progress) as on_step:
        return train_on_splits(
            splits,
            out,
            arch,
            config,
            loss_fn=loss_fn or cross_entropy_loss,
            on_step=on_step,
            extra={"data": str(data), **(extra or {})},
            arch_options=arch_options,
            init=init,
            segmentation=segmentation,
        )


def parse_arch_options(items: list[str]) -> dict[str, Any]:
    """``["stem=2", "pool=mean"]`` -> ``{"stem": 2, "pool": "mean"}`` (ints, floats, else strings).

    Raises:
        InputError: An item without ``=`` or with an empty name.
    """
    options: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--arch-option {item!r}: expected NAME=VALUE, e.g. stem=2")
        value: Any = text.strip()
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        options[name.strip()] = value
    return options


def summary_lines(result: TrainedModel) -> list[str]:
    """One line per split with its accuracy (segmentation: Dice), then where the checkpoint is."""
    lines = [f"{split} {result.metric}: {acc:.3f}" for split, acc in result.accuracy.items()]
    if result.history.epochs:
        last = result.history.epochs[-1].parts
        lines.append("last epoch: " + "  ".join(f"{k} {v:.4f}" for k, v in last.items()))
    if result.checkpoint is not None:
        task = "" if result.task == "classification" else f"{result.task}, "
        lines.append(f"checkpoint ({task}{result.arch}, classes {result.class_names}): {result.checkpoint}")
    return lines


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("train")
    def train(
        data: Path = typer.Option(..., "--data", help="Dataset folder ({train,val,test}/<class>/<case>)."),
        out: Path = typer.Option(..., "--out", help="Checkpoint file to write."),
        arch: str | None = typer.Option(
            None, "--arch", help=opt.ARCH_HELP + " With --task segmentation: unet2d or unet3d."
        ),
        task: str = typer.Option(
            "classification",
            "--task",
            help="classification (one class per case) or segmentation (per voxel, from the "
            "<case>_mask files).",
        ),
        seg_labels: str = typer.Option(
            "mask",
            "--seg-labels",
            help="--task segmentation: 'mask' (background + the mask, e.g. tumour) or 'class' "
            "(background + one class per class folder).",
        ),
        dice_weight: float = typer.Option(
            1.0, "--dice-weight", help="--task segmentation: soft Dice loss weight beside cross-entropy."
        ),
        arch_option: list[str] = typer.Option(
            [],
            "--arch-option",
            help="NAME=VALUE passed to the architecture (repeatable), e.g. --arch vit2d "
            "--arch-option stem=2 --arch-option pool=mean.",
        ),
        epochs: int = typer.Option(10, "--epochs", help="Passes over the training split."),
        seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and the batch order."),
        batch_size: int = typer.Option(16, "--batch-size", help="Cases per step."),
        lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, cosine decay)."),
        guided: bool = typer.Option(
            False,
            "--guided",
            help="Explanation-guided training: LRP relevance outside the masks costs (masks: the region "
            "that may matter, e.g. the organ or body).",
        ),
        guidance_weight: float = typer.Option(0.3, "--guidance-weight", help="Explanation loss weight."),
        mask_margin: int = typer.Option(
            0, "--mask-margin", help="--guided: grow the masks by this many pixels (lesion surroundings)."
        ),
        explain_start: int = typer.Option(
            0,
            "--explain-start",
            help="--guided: epochs before the LRP term starts (the reference term runs from the first "
            "step); a ViT trained from scratch needs it (docs/data-and-training.md).",
        ),
        explain_ramp: int | None = typer.Option(
            None,
            "--explain-ramp",
            help="--guided: epochs over which the LRP term's weight rises linearly from 0 after "
            "--explain-start (default 0: at once).",
        ),
        guidance_bound: str | None = typer.Option(
            None,
            "--guidance-bound",
            help="--guided: largest ratio of the LRP term's gradient norm to that of the rest of the "
            "loss, every step: auto (default: 0.3, the LRP term then explains every 64th case), none "
            "(unbounded) or a number >= 0.",
        ),
        counterfactual_weight: float | None = typer.Option(
            None,
            "--counterfactual-weight",
            help="--guided: weight of the cross-entropy on each referenced case with another case's "
            "content outside its mask (default 3; 0: off).",
        ),
        init: Path | None = typer.Option(
            None,
            "--init",
            help="Go on training (fine-tune) this medlrp checkpoint instead of fresh weights; its "
            "architecture, classes and preprocessing are kept.",
        ),
        progress: opt.Progress = True,
    ) -> None:
        """Train a model on a dataset folder; report accuracies and write a checkpoint for --model."""
        from medlrp.models.checkpoint import load_model
        from medlrp.train.folder import load_splits
        from medlrp.train.loop import TrainConfig
        from medlrp.train.segmentation import TASKS, segmentation_task
        from medlrp.train.tensors import batches_per_epoch

        opt.check_architecture(arch)
        if out.exists() and out.is_dir():
            raise InputError(f"{out}: --out is a folder; give a checkpoint file name")
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        config.check()
        options = parse_arch_options(arch_option)
        if task not in TASKS:
            raise InputError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
        segment = task == "segmentation"
        if segment and guided:
            raise InputError("--guided trains classifiers; it does not apply to --task segmentation")
        bound = check_guided_options(
            guided, mask_margin, explain_start, explain_ramp, guidance_bound, counterfactual_weight
        )
        start = load_model(init) if init is not None else None
        splits = load_splits(data, start.preprocessing if start is not None else None, 1 if segment else 2)
        seg = segmentation_task(data, splits.classes, seg_labels, dice_weight) if segment else None
        per_epoch = batches_per_epoch(len(splits.train.label), batch_size)
        ramp = explain_ramp or 0
        loss_fn, extra, main = guided_setup(
            guided,
            guidance_weight,
            mask_margin,
            explain_start * per_epoch,
            ramp * per_epoch,
            bound,
            counterfactual_weight,
        )
        if segment and "world_size" in extra:
            raise InputError("--task segmentation runs in one process; torchrun is not supported for it")
        if guided:
            extra["explain_start_epochs"] = explain_start
            extra["explain_ramp_epochs"] = ramp
        if init is not None:
            extra["init"] = str(init)
        result = run_train(
            data,
            out if main else None,
            arch,
            config,
            progress=main and progress,
            loss_fn=loss_fn,
            extra=extra,
            arch_options=options,
            splits=splits,
            init=start,
            segmentation=seg,
        )
        if main:
            for line in summary_lines(result):
                typer.echo(line)


def check_guided_options(
    guided: bool,
    margin: int,
    explain_start: int,
    explain_ramp: int | None,
    bound: str | None,
    counterfactual: float | None = None,
) -> float | str | None:
    """Check the ``--guided`` options before any work; return ``--guidance-bound`` parsed (default auto).

    Raises:
        InputError: A negative or unparsable value, or an option that needs ``--guided`` given without it.
    """
    opt.check_at_least_zero(margin, "--mask-margin", " pixels")
    opt.check_at_least_zero(explain_start, "--explain-start", " epochs")
    if explain_ramp is not None:
        opt.check_at_least_zero(explain_ramp, "--explain-ramp", " epochs")
    if counterfactual is not None:
        opt.check_at_least_zero(counterfactual, "--counterfactual-weight", "")
    parsed = opt.auto_none_or_number(bound, "--guidance-bound") if bound is not None else "auto"
    if not guided:
        given = {
            "--mask-margin": margin != 0,
            "--explain-start": explain_start != 0,
            "--explain-ramp": explain_ramp is not None,
            "--guidance-bound": bound is not None,
            "--counterfactual-weight": counterfactual is not None,
        }
        opt.check_needs("--guided", given)
    return parsed


def guided_setup(
    guided: bool,
    weight: float,
    margin: int = 0,
    explain_start: int = 0,
    explain_ramp: int = 0,
    bound: float | str | None = "auto",
    counterfactual: float | None = None,
) -> tuple[LossFn, dict[str, Any], bool]:
    """The loss for ``--guided`` / ``torchrun``, checkpoint extras, and whether this process is rank 0.

    ``explain_start`` and ``explain_ramp`` are in training steps, ``bound`` is ``guidance_bound``,
    ``counterfactual`` is ``counterfactual_weight`` (``None``: its default; see
    :class:`medlrp.train.guided.GuidedLoss`).
    """
    if not weight >= 0:
        raise InputError(f"--guidance-weight must be >= 0, not {weight}")
    from medlrp.train.guided import GuidedLoss
    from medlrp.train.guided_dist import guided_loss_fn, init_distributed
    from medlrp.train.losses import cross_entropy_loss

    info = init_distributed()
    if not guided and info is None:
        return cross_entropy_loss, {}, True
    criterion = GuidedLoss(
        weight if guided else 0.0,
        mask_margin=margin,
        explain_start=explain_start,
        explain_ramp=explain_ramp,
        guidance_bound=bound,
        **({} if counterfactual is None else {"counterfactual_weight": counterfactual}),
    )
    extra: dict[str, Any] = {"guided": guided, "guidance_weight": weight if guided else 0.0}
    if guided:
        extra["mask_margin"] = margin
        extra["explain_start_steps"] = explain_start
        extra["explain_ramp_steps"] = explain_ramp
        extra["guidance_bound"] = criterion.guidance_bound  # "auto": see GuidedLoss
        extra["counterfactual_weight"] = criterion.counterfactual_weight
    if info is not None:
        extra["world_size"] = info.world
    return guided_loss_fn(criterion, info), extra, info is None or info.is_main
