"""Helper processes that end with the process that started them (no orphan outlives a killed run)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; exit now if it already has.

    On Linux this is ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing is set (callers keep their own
    watch). The signal fires when the thread that started this process ends, so start helpers from the
    main thread.

    Args:
        parent: The parent's pid as the parent saw it (``os.getpid()`` before starting the helper).
        sig: The signal to receive.

    Returns:
        True when the kernel will send the signal.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    return armed
