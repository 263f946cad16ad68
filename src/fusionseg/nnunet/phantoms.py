"""Phantom datasets in nnU-Net v2's raw layout and plans like nnU-Net's planner writes, for tests and benchmarks.

3D: ``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz`` (1 mm spacing, fusionseg's phantoms);
2D: ``imagesTr/CASE_0000.png`` (grey) + ``labelsTr/CASE.png`` (class indices); ``imagesTs/`` and
``labelsTs/`` for the test cases; ``dataset.json`` with 3 labels.

Example:
    >>> make_nnunet_phantoms(Path(os.environ["nnUNet_raw"]) / "Dataset901_Phantom", spatial_dims=3)
    # then: nnUNetv2_plan_and_preprocess -d 901
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionseg.data import make_phantom_dataset, phantom

__all__ = ["make_nnunet_phantoms", "make_plans"]


def _architecture(spatial_dims: int, features: Sequence[int]) -> dict:
    """nnU-Net's default ``PlainConvUNet`` with ``features`` per stage (3×3 convolutions, stride 2)."""
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


def _configuration(patch: Sequence[int], spacing: Sequence[float], features: Sequence[int], normalization: str) -> dict:
    dims = len(patch)
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "data_identifier": f"nnUNetPlans_{dims}d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [int(p) for p in patch],
        "median_image_size_in_voxels": [float(p) for p in patch],
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": [normalization],
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
    patch_3d: Sequence[int] = (32, 32, 32),
    patch_2d: Sequence[int] = (32, 32),
    features: Sequence[int] = (8, 16, 32, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    normalization: str = "ZScoreNormalization",
    intensities: dict | None = None,
) -> dict:
    """A plans dict shaped like ``nnUNetPlans.json``: ``2d`` and ``3d_fullres`` configurations of a
    ``PlainConvUNet`` at ``spacing`` (nnU-Net's array order), one channel with ``intensities`` (the
    foreground statistics CT normalisation reads; defaults fit the phantoms)."""
    intensities = intensities or {"max": 3.0, "mean": 1.0, "median": 1.0, "min": -1.0, "percentile_00_5": -1.0,
                                  "percentile_99_5": 3.0, "std": 0.5}  # fmt: skip
    return {
        "dataset_name": "Dataset901_Phantom",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [float(s) for s in spacing],
        "original_median_shape_after_transp": [int(p) for p in patch_3d],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": _configuration(patch_2d, spacing[1:], features, normalization),
            "3d_fullres": _configuration(patch_3d, spacing, features, normalization),
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(intensities)},
    }


def make_nnunet_phantoms(
    root: str | Path,
    spatial_dims: int = 3,
    num_train: int = 5,
    num_test: int = 1,
    size: Sequence[int] | None = None,
    num_classes: int = 3,
    seed: int = 0,
) -> Path:
    """Write an nnU-Net raw dataset of phantoms to ``root`` (a ``DatasetXXX_Name`` folder) and return it.

    ``size`` defaults to 32³ (3D) or 64² (2D); nnU-Net's 5-fold split needs ``num_train >= 5``.
    """
    root = Path(root)
    if spatial_dims == 3:
        size = tuple(size or (32, 32, 32))
        return make_phantom_dataset(root, 3, num_train, num_test, size, num_classes, seed)
    if spatial_dims != 2:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    from PIL import Image

    size = tuple(size or (64, 64))
    rng = np.random.default_rng(seed)
    for split, count in (("Tr", num_train), ("Ts", num_test)):
        (root / f"images{split}").mkdir(parents=True, exist_ok=True)
        (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = phantom(2, size, num_classes, rng)
            case = f"phantom_{i:03d}" if split == "Tr" else f"phantom_test_{i:03d}"
            grey = np.round(np.clip(image * 200, 0, 255)).astype(np.uint8)
            Image.fromarray(grey).save(root / f"images{split}" / f"{case}_0000.png")
            Image.fromarray(label.astype(np.uint8)).save(root / f"labels{split}" / f"{case}.png")
    labels = {"background": 0, **{f"class{k}": k for k in range(1, num_classes)}}
    meta = {"channel_names": {"0": "grey"}, "labels": labels, "numTraining": num_train, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
