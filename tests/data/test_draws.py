"""Counter-based draws: a pure function of (seed, index, slot), uniform and unrelated."""

from __future__ import annotations

import numpy as np

from sssi.data.draws import uniforms


def test_a_sample_draws_the_same_numbers_alone_or_in_any_batch() -> None:
    batch = uniforms(7, [5, 1_000_000_123, 2], 6)
    assert batch.shape == (3, 6) and batch.dtype == np.float64
    assert np.array_equal(batch[1], uniforms(7, [1_000_000_123], 6)[0])
    assert np.array_equal(batch[::-1], uniforms(7, [2, 1_000_000_123, 5], 6))
    # more slots extend a sample's numbers, they do not change the first ones
    assert np.array_equal(batch[:, :4], uniforms(7, [5, 1_000_000_123, 2], 4))
    assert not np.array_equal(batch, uniforms(8, [5, 1_000_000_123, 2], 6))
    assert not np.array_equal(batch[0], batch[2])


def test_the_draws_are_uniform_and_unrelated_across_indices_seeds_and_slots() -> None:
    u = uniforms(0, np.arange(20_000), 4)
    assert u.min() >= 0.0 and u.max() < 1.0
    for column in u.T:  # each decile holds a tenth of the draws (binomial sd ~0.002)
        counts = np.bincount((column * 10).astype(int), minlength=10) / len(column)
        assert np.abs(counts - 0.1).max() < 0.01, counts
    # neighbouring indices, neighbouring slots and neighbouring seeds are unrelated
    pairs = [(u[:-1, 0], u[1:, 0]), (u[:, 0], u[:, 1]), (u[:, 2], u[:, 3]),
             (u[:, 0], uniforms(1, np.arange(20_000), 1)[:, 0])]
    for a, b in pairs:
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    # the low bits vary too (row and column offsets are floor(u * n))
    assert len(np.unique((u[:, 0] * 7).astype(int))) == 7
