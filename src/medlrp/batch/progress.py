"""The progress bar of a batch run: cases done, cases per second, time left (rank 0 only)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class CasesPerSecond(ProgressColumn):
    """Shows the recent rate in cases per second."""

    def render(self, task: Task) -> Text:
        """Render the rate of ``task``."""
        speed = task.finished_speed or task.speed
        return Text("-- cases/s" if speed is None else f"{speed:.2f} cases/s")


class CaseProgress:
    """A context manager around a rich progress bar; silent when ``enabled`` is False."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            CasesPerSecond(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more cases as handled."""
        self._progress.advance(self._task, n)

    def __enter__(self) -> CaseProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()
