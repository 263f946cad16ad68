"""Tiny on-disk datasets for the data tests (session-scoped; copy before modifying)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fusionseg.data import make_phantom_dataset


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


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = np.eye(4) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


@pytest.fixture
def nifti_writer():
    return save_nifti
