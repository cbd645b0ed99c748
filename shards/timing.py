"""What the benchmarks (`python -m shards.bench`, `finetune.bench`, `pretrain.bench`) measure with:
a clock that waits for a GPU's queued kernels, medians, alternating two measurements, and
memory in MiB. It imports torch only when a clock is made for a GPU.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Callable, TypeVar

T = TypeVar("T")
U = TypeVar("U")


class Clock:
    """Wall time in seconds; on a GPU (`cuda`), synchronised first so that the kernels queued
    so far are counted where they run."""

    def __init__(self, cuda: bool = False):
        if cuda:
            import torch

            self.sync = torch.cuda.synchronize
        else:
            self.sync = lambda: None

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()

    def time(self, fn: Callable[[], object]) -> float:
        """Seconds that one call of `fn` takes."""
        start = self()
        fn()
        return self() - start


def median(values) -> float:
    """The median; NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def median_time(fn: Callable[[], object], steps: int, warmup: int = 0, clock: Clock | None = None) -> float:
    """Median seconds of `steps` calls of `fn` after `warmup` unmeasured ones."""
    clock = clock or Clock()
    for _ in range(warmup):
        fn()
    return median(clock.time(fn) for _ in range(steps))


def alternate(first: Callable[[], T], second: Callable[[], U], steps: int, warmup: int = 0) -> tuple[list[T], list[U]]:
    """Call `first` and `second` in turns, `warmup` rounds and then `steps` measured ones, the
    one that goes first swapped each round (ABBA) so that a busy machine slows both alike;
    returns what each returned in the measured rounds."""
    a, b = [], []
    for i in range(warmup + steps):
        if i % 2 == 0:
            x, y = first(), second()
        else:
            y, x = second(), first()
        if i >= warmup:
            a.append(x)
            b.append(y)
    return a, b


def mib(n: float, spec: str = "9.1f") -> str:
    """`n` bytes in MiB, as text: `mib(2**21)` is '      2.0 MiB'."""
    return f"{n / 2**20:{spec}} MiB"


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
