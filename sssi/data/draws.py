"""Random numbers as a pure function of ``(seed, index, slot)``: counter-based draws.

A training window (its region, zoom, position) and its augmentation parameters depend
only on the run's seed and the sample's index, so a resumed run, or one with another
number of workers, draws the same samples. Seeding a ``numpy.random.Generator`` per
sample gives that too, but costs ~20 us to set up and a few us per call, about a
quarter of what a worker spends on a 128 px window. Here the uniforms of a whole batch
come from hashing the counters at once: a few vectorised integer operations per batch.

The hash is SplitMix64's output function (Steele, Lea and Flood, OOPSLA 2014), a
bijection of 64-bit integers whose outputs pass the usual statistical test batteries
for consecutive inputs. It mixes the seed into a key, the key with the index, and that
with the slot, so neighbouring seeds, indices and slots give unrelated numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["uniforms"]

_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a ``uint64`` array (wraps modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MUL1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MUL2)
    return x ^ (x >> np.uint64(31))


@lru_cache(maxsize=64)
def _key(seed: int) -> np.uint64:
    """The seed's own 64-bit key (SplitMix64 in Python integers)."""
    x = (seed * _GOLDEN + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * _MUL1) & _MASK
    x = ((x ^ (x >> 27)) * _MUL2) & _MASK
    return np.uint64(x ^ (x >> 31))


@lru_cache(maxsize=16)
def _slots(slots: int) -> np.ndarray:
    """The slots' offsets ``(1, slots)``, shared between calls (read-only)."""
    offsets = (np.arange(1, slots + 1, dtype=np.uint64) * np.uint64(_MUL2)).reshape(1, -1)
    offsets.setflags(write=False)
    return offsets


def uniforms(seed: int, indices: Sequence[int] | np.ndarray, slots: int) -> np.ndarray:
    """``(len(indices), slots)`` float64 uniforms in [0, 1): entry ``[i, j]`` depends only
    on ``(seed, indices[i], j)``, never on the other indices asked for with it."""
    index = np.asarray(indices, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
    base = _mix(_key(seed) ^ (index * np.uint64(_GOLDEN)))
    return (_mix(base + _slots(slots)) >> np.uint64(11)).astype(np.float64) * 2.0**-53
