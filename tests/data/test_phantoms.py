"""Phantom generator: shapes, classes, determinism, learnable intensity structure, dataset layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fusionseg.data import make_phantom_dataset, phantom, read_label


@pytest.mark.parametrize(("dims", "size", "num_classes"), [(2, (48, 40), 3), (2, (32, 32), 2), (3, (24, 20, 16), 4)])
def test_phantom_shapes_classes_and_intensity_order(dims, size, num_classes):
    image, label = phantom(dims, size, num_classes, rng=np.random.default_rng(3))
    assert image.shape == size and image.dtype == np.float32
    assert label.shape == size and label.dtype == np.uint8
    assert sorted(np.unique(label)) == list(range(num_classes))
    means = [image[label == k].mean() for k in range(1, num_classes)]
    assert np.all(np.diff(means) > 0.1), means  # classes separable by intensity
    assert 0.05 < image[label == 1].std() < 0.25  # noisy and textured, not flat


def test_phantom_noise_controls_difficulty():
    _, label = phantom(2, (64, 64), 3, rng=5, noise=0.0)
    clean, _ = phantom(2, (64, 64), 3, rng=5, noise=0.0)
    noisy, _ = phantom(2, (64, 64), 3, rng=5, noise=0.3)
    inside = label == 2
    assert noisy[inside].std() > 2 * clean[inside].std()


def test_phantom_is_deterministic_per_seed():
    a = phantom(2, (32, 32), 3, rng=7)
    b = phantom(2, (32, 32), 3, rng=7)
    c = phantom(2, (32, 32), 3, rng=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"size": (4, 8)}, "size"),
        ({"size": (32, 32, 32)}, "size"),
        ({"num_classes": 1}, "num_classes"),
        ({"noise": -0.1}, "noise"),
    ],
)
def test_phantom_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        phantom(**{"spatial_dims": 2, **kwargs})


def test_phantom_dataset_2d_layout(phantom2d_root):
    assert sorted(p.name for p in (phantom2d_root / "images").iterdir()) == [f"phantom_00{i}.png" for i in range(3)]
    assert (phantom2d_root / "test" / "masks" / "phantom_000.png").is_file()
    meta = json.loads((phantom2d_root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "class1": 1, "class2": 2}
    img = np.asarray(Image.open(phantom2d_root / "images" / "phantom_000.png"))
    assert img.dtype == np.uint8 and img.shape == (32, 32) and img.max() > 100


def test_phantom_dataset_binary_masks_are_0_255(tmp_path):
    root = make_phantom_dataset(tmp_path / "bin", 2, num_train=1, num_test=0, size=(32, 32), num_classes=2)
    raw = np.asarray(Image.open(root / "masks" / "phantom_000.png"))
    assert set(np.unique(raw)) == {0, 255}
    label, _ = read_label(root / "masks" / "phantom_000.png")
    assert set(np.unique(label)) == {0, 1}


def test_phantom_dataset_3d_layout(phantom3d_root):
    names = sorted(p.name for p in (phantom3d_root / "imagesTr").iterdir())
    assert names == [f"phantom_00{i}_0000.nii.gz" for i in range(3)]
    assert (phantom3d_root / "labelsTs" / "phantom_test_000.nii.gz").is_file()
    label, meta = read_label(phantom3d_root / "labelsTr" / "phantom_000.nii.gz")
    assert label.shape == (24, 20, 16) and meta["spacing"] == (1.0, 1.0, 1.0)
    assert json.loads((phantom3d_root / "dataset.json").read_text())["file_ending"] == ".nii.gz"
