"""How many torch threads a CPU fit should use: the idle cores, measured, not assumed."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Below this many feature entries (n x d) a CPU fit runs on one thread: the ops are so short
# that per-op threading overhead outweighs the gain even on an idle machine.
SMALL_PROBLEM = 1 << 17

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def default_threads() -> int:
    """As many torch threads as the machine has idle cores right now (at least one).

    The solver runs thousands of short ops; a thread that has no free core to run on makes
    every op wait for it (on a busy 2-core machine two threads measured up to 5x slower than
    one), while on an idle machine each extra core cuts the time almost proportionally. So
    the idle cores are measured (``idle_cores``) instead of assuming either machine.
    """
    return max(1, min(torch.get_num_threads(), usable_cores(), round(idle_cores())))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def idle_cores(window: float = 0.05) -> float:
    """Cores left idle by every other process, measured over ``window`` seconds.

    Linux: the idle share of ``/proc/stat``'s CPU time across the window, this process's own
    CPU time counted as idle (it sleeps meanwhile, but its thread pools may still spin).
    Elsewhere: usable cores minus the 1-minute load.
    """
    def sample() -> tuple[float, int] | None:
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # idle + iowait, plus this process's own CPU time (torch's OpenMP workers keep spinning
        # for a while after a parallel region; counted as load, they made a fit right after
        # another one measure a busy core and run on one thread), and the total, in clock ticks
        own = time.process_time() * _TICKS
        return fields[3] + (fields[4] if len(fields) > 4 else 0) + own, sum(fields)

    cores = usable_cores()
    first = sample()
    if first is None:
        try:
            return max(0.0, cores - os.getloadavg()[0])
        except (AttributeError, OSError):
            return float(cores)
    time.sleep(window)
    second = sample()
    total = second[1] - first[1] if second else 0
    if second is None or total <= 0:
        return float(cores)
    return min(cores, (os.cpu_count() or cores) * (second[0] - first[0]) / total)


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


