"""Shared timing and memory helpers of the benchmarks (imported by the scripts next to it).

Time: :func:`interleaved` runs every contender once per round, in turn, so load changes on a shared
machine hit all of them alike, and reports the median per contender. On a GPU the device is
synchronised before and after each call (``sync``), so a call's time is its kernels' time, not its
launch time.

Memory: :func:`peak_memory` is the peak growth of memory during one call above what was allocated
before it: on CUDA ``torch.cuda.max_memory_allocated`` (the caching allocator's live tensors, exact);
on the CPU the process's peak resident set size (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident set size before the call. torch allocates on the CPU
through the C allocator, which tracemalloc cannot see; RSS does. The CPU figure is only as good as the
allocator returns freed memory: run with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc), or call
:func:`release_freed_memory` first, so that freed tensors leave the resident set at once (see
benchmarks/lrp_speed.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import statistics
import time
from collections.abc import Callable

import torch

#: glibc setting under which the CPU's peak RSS is the peak of live tensors (see the module docstring).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def release_freed_memory() -> bool:
    """Set glibc's mmap threshold to 64 KB in this process (what ``MALLOC_ENV`` does for a new one).

    Freed tensors then leave the resident set at once, so the peak RSS is the peak of live tensors.
    Returns whether it took effect (``False`` off glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 65536))
    except (OSError, AttributeError):
        return False


#: glibc's ``mallopt`` parameter number of the mmap threshold.
_M_MMAP_THRESHOLD = -3


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """A callable waiting for ``device``'s queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    warmup: bool = True,
    cpu: dict[str, float] | None = None,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median seconds (by ``clock``) of each callable over ``repeats`` interleaved rounds.

    Args:
        fns: Contenders by name, each a no-argument callable running one call.
        repeats: Rounds; in each round every contender runs once, in turn.
        clock: ``time.perf_counter`` (wall) or ``time.process_time`` (this process's CPU time).
        warmup: One untimed call of each contender first.
        cpu: When given, receives the median CPU seconds of this process per contender (with one
            torch thread the work done, much less disturbed than wall time by other jobs).
        sync: Waits for the device (see :func:`device_sync`); called before and after each timed call.
    """
    for fn in fns.values() if warmup else ():
        fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu_times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0, c0 = clock(), time.process_time()
            fn()
            sync()
            times[name].append(clock() - t0)
            cpu_times[name].append(time.process_time() - c0)
    if cpu is not None:
        cpu.update({k: statistics.median(v) for k, v in cpu_times.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def rss() -> int:
    """Current resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm() -> int:
    """Peak resident set size since the last reset, in bytes (Linux ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_hwm() -> None:
    """Reset the kernel's peak resident set size (``VmHWM``) to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak memory growth in bytes during one call of ``fn`` (see the module docstring for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return max(torch.cuda.max_memory_allocated(device) - before, 0)
    reset_hwm()
    before = rss()
    out = fn()
    del out
    return max(hwm() - before, 0)
