"""Shared test fixtures: seeded RNG, and the real data folder (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Preprocessed data of every test go to a temporary cache root, never to ~/.cache."""
    monkeypatch.setenv("FUSIONSEG_CACHE", str(tmp_path_factory.getbasetemp() / "fusionseg-cache"))


@pytest.fixture
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when the folder is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it ships beside the repo, not in it)")
    return SHARED_DATA


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
