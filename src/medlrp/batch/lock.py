"""One batch run per output folder at a time: rank 0 holds an exclusive lock on ``OUT/.lock``.

The lock is an ``flock`` on an open file, so the kernel drops it when the process dies (SIGKILL
included): a killed run never leaves a stale lock. (``flock`` is advisory and local to a machine on
some network file systems; two runs from different machines into one folder are not detected there.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from medlrp.errors import InputError

LOCK = ".lock"


class RunLock:
    """Context manager holding the folder's lock; a second holder gets an :class:`InputError`."""

    def __init__(self, out_dir: Path, enabled: bool = True) -> None:
        self.path = out_dir / LOCK
        self.enabled = enabled
        self._fd = -1

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise InputError(
                f"{self.path.parent}: another medlrp batch run is writing into this folder"
            ) from None
        return self

    @property
    def inherited_fds(self) -> list[int]:
        """The descriptors a forked child should close to not hold the lock itself."""
        return [self._fd] if self._fd >= 0 else []

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the lock
            self._fd = -1
