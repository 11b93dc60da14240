"""What every benchmark shares: timers, the device sync, memory formats, autocast and
the CPU flags that decide what a precision costs.

One way to time each kind of thing:

- :func:`best_of`: a call timed several times, the fastest kept (kernels, forwards);
- :class:`LoopTimer`: whole iterations of a Lightning training loop, the median kept
  (a step with its fetch, hooks and logging);
- :func:`median_seconds`: the median of timed durations.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import lightning as L
import torch

from sssi import scaling

#: ``--formats`` choices -> torch memory formats
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}

#: ``/proc/cpuinfo`` flags that change what bf16 and fp32 cost on a CPU
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def sync(device: torch.device | str | None = None) -> None:
    """Wait for the GPU's queued work (nothing on a CPU), so a clock reads real time."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def best_of(fn: Callable[[], object], repeats: int, device: torch.device | str | None = None
            ) -> float:
    """Fastest of ``repeats`` timed calls after one untimed call (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def median_seconds(durations: list[float]) -> float:
    """The median timed duration (NaN when none was timed)."""
    return statistics.median(durations) if durations else float("nan")


def autocast_for(precision: str, device_type: str = "cpu") -> torch.autocast:
    """Autocast to bf16 for ``bf16-mixed``, a disabled one for ``32-true``."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def cpu_flags(cpuinfo: str | None = None) -> str:
    """The :data:`CPU_FLAGS` this CPU has, for the header of a benchmark's table (read by
    :func:`sssi.scaling.cpu_flags`, the reader ``trainer.precision=auto`` uses)."""
    have = scaling.cpu_flags(cpuinfo)
    if cpuinfo is None and not have:
        return "unknown"
    return " ".join(f for f in CPU_FLAGS if f in have) or "none of " + " ".join(CPU_FLAGS)


class LoopTimer(L.Callback):
    """Wall time of each whole loop iteration (fetch, hooks, step, logging) after ``skip``
    warm-up batches, up to batch ``last`` when given; time handed to :meth:`exclude` (work
    run between two steps that is not the step's, e.g. a reference step) is not counted."""

    def __init__(self, skip: int, last: int | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.skip, self.last, self.clock = skip, last, clock
        self.durations: list[float] = []
        self._prev: float | None = None
        self._excluded = 0.0

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` spent since the last batch's end out of the next duration."""
        self._excluded += seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync()
        now = self.clock()
        if batch_idx == self.skip - 1 and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        timed = batch_idx >= self.skip and (self.last is None or batch_idx <= self.last)
        if timed and self._prev is not None:
            self.durations.append(now - self._prev - self._excluded)
        self._prev, self._excluded = now, 0.0

    @property
    def seconds_per_step(self) -> float:
        return median_seconds(self.durations)
