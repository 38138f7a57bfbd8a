"""``medlrp train``: train a registered architecture on a dataset folder and write a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from medlrp.errors import InputError
from medlrp.train.folder import TrainedModel, load_splits, train_on_splits
from medlrp.train.loop import TrainConfig
from medlrp.train.progress import training_progress


def run_train(
    data: Path, out: Path | None, arch: str | None, config: TrainConfig, progress: bool = True
) -> TrainedModel:
    """Plain training with a progress bar (see :func:`medlrp.train.train_on_folder`)."""
    config.check()
    splits = load_splits(data)  # bad data is reported before a progress bar appears
    with training_progress(config.epochs, enabled=progress) as on_step:
        return train_on_splits(splits, out, arch, config, on_step=on_step, extra={"data": str(data)})


def summary_lines(result: TrainedModel) -> list[str]:
    """One line per split with its accuracy, then where the checkpoint is."""
    lines = [f"{split} accuracy: {acc:.3f}" for split, acc in result.accuracy.items()]
    if result.checkpoint is not None:
        lines.append(f"checkpoint ({result.arch}, classes {result.class_names}): {result.checkpoint}")
    return lines


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("train")
    def train(
        data: Path = typer.Option(..., "--data", help="Dataset folder ({train,val,test}/<class>/<case>)."),
        out: Path = typer.Option(..., "--out", help="Checkpoint file to write."),
        arch: str | None = typer.Option(None, "--arch", help="Architecture (default cnn2d / cnn3d)."),
        epochs: int = typer.Option(10, "--epochs", help="Passes over the training split."),
        seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and the batch order."),
        batch_size: int = typer.Option(16, "--batch-size", help="Cases per step."),
        lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, cosine decay)."),
        guided: bool = typer.Option(False, "--guided", help="Explanation-guided training (not yet)."),
        guidance_weight: float = typer.Option(1.0, "--guidance-weight", help="Explanation loss weight."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Train a model on a dataset folder; report accuracies and write a checkpoint for --model."""
        if guided:
            raise InputError("--guided: explanation-guided training is not available yet")
        if out.exists() and out.is_dir():
            raise InputError(f"{out}: --out is a folder; give a checkpoint file name")
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        result = run_train(data, out, arch, config, progress=not quiet)
        for line in summary_lines(result):
            typer.echo(line)
