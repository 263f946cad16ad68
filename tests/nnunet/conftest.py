"""nnU-Net test helpers: a small plans dict like nnU-Net's planner writes, and its dataset.json."""

from __future__ import annotations

import copy

import pytest

NEEDS_NNUNET = "nnunetv2 is not installed (install it as docs/nnunet.md says)"

DATASET_JSON = {
    "channel_names": {"0": "phantom"},
    "labels": {"background": 0, "class1": 1, "class2": 2},
    "numTraining": 5,
    "file_ending": ".nii.gz",
}


def make_plans(
    patch_3d=(32, 32, 32), patch_2d=(32, 32), features=(8, 16, 32, 64), continue_training: bool | None = False
) -> dict:
    """:func:`fusionseg.nnunet.phantoms.make_plans` (1 mm), with run_training's flag when given."""
    from fusionseg.nnunet.phantoms import make_plans as plans_like_nnunet

    plans = plans_like_nnunet(patch_3d, patch_2d, features)
    if continue_training is not None:
        plans["continue_training"] = continue_training
    return plans


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's folder variables pointing into tmp_path (the trainer creates its output folder there)."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    for dims in (2, 3):  # trainer.initialize() infers the dataset class from the preprocessed files' ending
        folder = tmp_path / "nnUNet_preprocessed" / "Dataset901_Phantom" / f"nnUNetPlans_{dims}d"
        folder.mkdir(parents=True)
        (folder / "case.b2nd").touch()
    return tmp_path


@pytest.fixture
def dataset_json() -> dict:
    return copy.deepcopy(DATASET_JSON)


@pytest.fixture
def plans_factory():
    """:func:`make_plans` (a fixture, so that test modules need no import path to this file)."""
    return make_plans
