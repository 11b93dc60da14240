"""Shared fixtures: small synthetic datasets in the real ISPRS layout (the real samples:
``tests.helpers.real_sample``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 4-tile, 256 px synthetic Potsdam (3 train tiles, 1 test tile). Read-only; a run
    on it says so (``+debug=tiny data.synthetic.tiles=4``): a run that asks for other
    parameters is refused rather than replacing it."""
    from sssi.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "potsdam", tiles=4, size=256, seed=0)


@pytest.fixture
def potsdam_copy(synthetic_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset that a test may damage."""
    dst = tmp_path / "potsdam"
    shutil.copytree(synthetic_root, dst)
    return dst
