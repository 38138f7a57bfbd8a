"""A progress bar for training (rich, on stderr): one bar over all steps, loss and accuracy shown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medlrp.train.loop import StepCallback


def make_progress(console: Console | None = None) -> Progress:
    """The bar layout shared by medlrp's commands: description, bar, count, elapsed time, status."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True),
    )


@contextmanager
def training_progress(epochs: int, enabled: bool = True) -> Iterator[StepCallback | None]:
    """Yield an ``on_step`` callback for :func:`medlrp.train.fit` that drives a bar (None if disabled)."""
    if not enabled:
        yield None
        return
    with make_progress() as progress:
        task = progress.add_task("training", total=None, status="")

        def on_step(epoch: int, step: int, steps: int, parts: dict[str, float]) -> None:
            progress.update(
                task,
                total=epochs * steps,
                completed=epoch * steps + step + 1,
                description=f"epoch {epoch + 1}/{epochs}",
                status="  ".join(f"{k} {v:.3f}" for k, v in parts.items()),
            )

        yield on_step


@contextmanager
def counting_progress(total: int, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(status, steps=1)``, moving a bar over ``total`` items (does nothing if disabled)."""
    if not enabled:
        yield lambda status, steps=1: None
        return
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        yield lambda status, steps=1: progress.update(task, advance=steps, status=status)
