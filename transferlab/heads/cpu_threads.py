"""How many torch threads a CPU fit should use: the idle cores, measured, not assumed."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Below this many feature entries (n x d) a CPU fit runs on one thread: the ops are so short
# that per-op threading overhead outweighs the gain even on an idle machine (2 cores, idle,
# 7 Cs + refit: two threads 0.96x at 100 x 32, 1.03x at 200 x 64, 1.10x at 500 x 192).
SMALL_PROBLEM = 1 << 14

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def default_threads() -> int:
    """As many torch threads as the machine has idle cores right now (at least one).

    The solver runs thousands of short ops; a thread that has no free core to run on makes
    every op wait for it (on a busy 2-core machine two threads measured up to 5x slower than
    one), while on an idle machine each extra core cuts the time almost proportionally. So
    the idle cores are measured (``idle_cores``) instead of assuming either machine; a window
    that ended at the previous call (or the sample taken when this module was imported) under
    ``RECENT`` seconds ago is reused: fits in a loop, and a first fit soon after the import, do
    not each sleep 50 ms (a third of a 600 x 192 probe fit).
    """
    return max(1, min(torch.get_num_threads(), usable_cores(), round(idle_cores(reuse=True))))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# A /proc/stat sample at most this many seconds old still starts a window that describes the
# machine's load (a competitor that started later shows as the share of the window it ran).
RECENT = 10.0


def _sample() -> tuple[float, int] | None:
    """Idle ticks (idle + iowait + this process's own CPU time) and total ticks, from /proc/stat.

    This process's own CPU time counts as idle: torch's OpenMP workers keep spinning for a
    while after a parallel region; counted as load, they made a fit right after another one
    measure a busy core and run on one thread.
    """
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    own = time.process_time() * _TICKS
    return fields[3] + (fields[4] if len(fields) > 4 else 0) + own, sum(fields)


def idle_cores(window: float = 0.05, reuse: bool = False) -> float:
    """Cores left idle by every other process, measured over ``window`` seconds.

    Linux: the idle share of ``/proc/stat``'s CPU time across the window, this process's own
    CPU time counted as idle. ``reuse``: when the previous call ended between ``window`` and
    ``RECENT`` seconds ago, the window since then is measured instead (no sleep).
    Elsewhere: usable cores minus the 1-minute load.
    """
    global _last
    cores = usable_cores()
    now = time.monotonic()
    if reuse and _last is not None and window <= now - _last[0] <= RECENT:
        first: tuple[float, int] | None = _last[1]
    else:
        first = _sample()
        if first is not None:
            time.sleep(window)
    if first is None:
        try:
            return max(0.0, cores - os.getloadavg()[0])
        except (AttributeError, OSError):
            return float(cores)
    second = _sample()
    if second is not None:
        _last = _stamped(second)
    total = second[1] - first[1] if second else 0
    if second is None or total <= 0:
        return float(cores)
    return min(cores, (os.cpu_count() or cores) * (second[0] - first[0]) / total)


def _stamped(sample: tuple[float, int] | None) -> tuple[float, tuple[float, int]] | None:
    return None if sample is None else (time.monotonic(), sample)


# (monotonic time, sample) of the last measurement; the import's sample starts the first window
_last = _stamped(_sample())


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op torch threads (None: leave the setting alone)."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


