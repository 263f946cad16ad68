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


def _architecture(spatial_dims: int, features: tuple[int, ...]) -> dict:
    conv = "Conv3d" if spatial_dims == 3 else "Conv2d"
    norm = "InstanceNorm3d" if spatial_dims == 3 else "InstanceNorm2d"
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": f"torch.nn.modules.conv.{conv}",
            "kernel_sizes": [[3] * spatial_dims] * n,
            "strides": [[1] * spatial_dims] + [[2] * spatial_dims] * (n - 1),
            "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.{norm}",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _configuration(patch: list[int], batch_size: int, features: tuple[int, ...]) -> dict:
    dims = len(patch)
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "data_identifier": f"nnUNetPlans_{dims}d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size,
        "patch_size": list(patch),
        "median_image_size_in_voxels": [float(p) for p in patch],
        "spacing": [1.0] * dims,
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": _architecture(dims, features),
        "batch_dice": dims == 2,
    }


def make_plans(
    patch_3d=(32, 32, 32), patch_2d=(32, 32), features=(8, 16, 32, 64), continue_training: bool | None = False
) -> dict:
    """A plans dict shaped like nnUNetPlans.json (4-stage PlainConvUNet), with run_training's flag when given."""
    plans = {
        "dataset_name": "Dataset901_Phantom",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": list(patch_3d),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": _configuration(list(patch_2d), 2, features),
            "3d_fullres": _configuration(list(patch_3d), 2, features),
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 3.0,
                "mean": 1.0,
                "median": 1.0,
                "min": -1.0,
                "percentile_00_5": -1.0,
                "percentile_99_5": 3.0,
                "std": 0.5,
            }
        },
    }
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
