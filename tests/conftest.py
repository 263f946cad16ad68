"""Shared test fixtures: seeded RNG, one thread, phantoms, and the real data shipped with the package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusionseg.resources import real_data_path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _precision_cache(tmp_path_factory, monkeypatch):
    """Measured --amp choices go to a per-test file, never to the user's cache."""
    monkeypatch.setenv("FUSIONSEG_PRECISION_CACHE", str(tmp_path_factory.mktemp("precision") / "precision.json"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Preprocessed data of every test go to a temporary cache root, never to ~/.cache."""
    monkeypatch.setenv("FUSIONSEG_CACHE", str(tmp_path_factory.getbasetemp() / "fusionseg-cache"))


@pytest.fixture
def real_data_dir() -> Path:
    """The folder holding ``nuclei2d/`` and ``brain3d/`` shipped in ``fusionseg/resources/data``."""
    return real_data_path()


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of many tiny ops: more OpenMP threads than idle cores make them spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_phantom_2d(tmp_path: Path) -> Path:
    """A 2D phantom dataset (4 train, 1 test cases, 32×32) written under ``tmp_path/data``."""
    from fusionseg.data import make_phantom_dataset

    return make_phantom_dataset(tmp_path / "data", spatial_dims=2, num_train=4, num_test=1, size=(32, 32), seed=0)
