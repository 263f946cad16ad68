"""Tiny on-disk datasets for the data tests (session-scoped; copy before modifying)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dataset_builders import LPS, OBLIQUE_3D, nnunet_dataset, save_any, save_nifti, write_dataset_json
from fusionseg.data import make_phantom_dataset

__all__ = ["LPS", "OBLIQUE_3D", "nnunet_dataset", "save_any", "save_nifti", "write_dataset_json"]


@pytest.fixture(scope="session")
def phantom2d_root(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("p2") / "ds", 2, num_train=3, num_test=1, size=(32, 32))


@pytest.fixture(scope="session")
def phantom3d_root(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("p3") / "ds", 3, num_train=3, num_test=1, size=(24, 20, 16))


@pytest.fixture
def copy_dataset(tmp_path):
    """``copy_dataset(root)`` → a writable copy of a session dataset."""

    def copy(root: Path) -> Path:
        return Path(shutil.copytree(root, tmp_path / root.parent.name))

    return copy


@pytest.fixture
def nifti_writer():
    return save_nifti


@pytest.fixture
def any_writer():
    return save_any


@pytest.fixture
def make_nnunet():
    """``make_nnunet(root, images, label_maps, ext, affine=None, **dataset_json)`` → root (:func:`nnunet_dataset`)."""
    return nnunet_dataset
