"""Phantom datasets in nnU-Net v2's raw layout, for tests, benchmarks and trying the trainers out.

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

__all__ = ["make_nnunet_phantoms"]


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
