"""Synthetic 2D/3D phantoms: textured, noisy ellipses/ellipsoids of several classes.

The built-in default data: classes differ in mean intensity and in texture (stripe frequency),
so a small U-Net learns them in about a minute on a CPU, while noise, a smooth bias field and
random shapes keep the task from being a simple threshold.

Example:
    >>> image, label = phantom(2, (96, 96), num_classes=3, rng=np.random.default_rng(0))
    >>> image.shape, image.dtype, sorted(np.unique(label))
    ((96, 96), dtype('float32'), [0, 1, 2])
    >>> root = make_phantom_dataset("/tmp/phantom3d", spatial_dims=3, num_train=4, num_test=1)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["make_phantom_dataset", "phantom"]

_DEFAULT_SIZE = {2: (96, 96), 3: (64, 64, 64)}


def _check_args(spatial_dims: int, size: Sequence[int] | None, num_classes: int) -> tuple[int, ...]:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    size = tuple(int(s) for s in (size or _DEFAULT_SIZE[spatial_dims]))
    if len(size) != spatial_dims or min(size) < 8:
        raise ValueError(f"size must be {spatial_dims} ints >= 8 for spatial_dims={spatial_dims}, got {size}")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= 8:
        raise ValueError(f"num_classes must be an int in [2, 8] (background included), got {num_classes!r}")
    return size


def _random_rotation(spatial_dims: int, rng: np.random.Generator) -> np.ndarray:
    if spatial_dims == 2:
        t = rng.uniform(0, np.pi)
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid(grid: np.ndarray, center: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Boolean mask of an ellipsoid; ``grid`` is (D, *S) coordinates in [-1, 1]."""
    d = grid - center.reshape(-1, *([1] * (grid.ndim - 1)))
    local = np.tensordot(rot.T, d, axes=1)  # coordinates in the ellipsoid frame
    return np.sum((local / radii.reshape(-1, *([1] * (grid.ndim - 1)))) ** 2, axis=0) <= 1.0


def phantom(
    spatial_dims: int = 2,
    size: Sequence[int] | None = None,
    num_classes: int = 3,
    rng: np.random.Generator | int | None = None,
    noise: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: ``image`` float32 (*S) roughly in [0, 1] and ``label`` uint8 (*S) in [0, num_classes).

    A body ellipse (background class) holds one to two ellipses per foreground class. Class ``k``
    has mean intensity ``0.3 + 0.6·k/(K-1)`` and stripes of a class-specific frequency; Gaussian
    noise (σ ``noise``, default 0.08), a smooth bias field and a random global contrast are added
    on top. Raise ``noise`` (e.g. 0.25) for a harder task that separates models more.
    """
    size = _check_args(spatial_dims, size, num_classes)
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1] (Gaussian σ on a 0-1 intensity scale), got {noise!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float64) for s in size]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    body_radii = rng.uniform(0.8, 0.95, spatial_dims)
    body = _ellipsoid(grid, rng.uniform(-0.05, 0.05, spatial_dims), body_radii, np.eye(spatial_dims))
    for _ in range(20):  # redraw until every class is visible
        label = np.zeros(size, dtype=np.uint8)
        for k in range(1, num_classes):
            for _ in range(rng.integers(1, 3)):
                radii = rng.uniform(0.12, 0.3, spatial_dims) * (1.0 - 0.15 * (k - 1) / max(1, num_classes - 2))
                center = rng.uniform(-0.5, 0.5, spatial_dims)
                label[_ellipsoid(grid, center, radii, _random_rotation(spatial_dims, rng)) & body] = k
        counts = np.bincount(label.ravel(), minlength=num_classes)
        if counts[1:].min() >= 0.004 * label.size:
            break
    levels = np.array([0.3 + 0.6 * k / (num_classes - 1) for k in range(num_classes)])
    image = np.where(body, levels[label], 0.05)
    # Texture: stripes whose frequency grows with the class along a random direction.
    direction = rng.normal(size=spatial_dims)
    phase = np.tensordot(direction / np.linalg.norm(direction), grid, axes=1)
    freq = 6.0 + 5.0 * label
    image = image * (1.0 + 0.12 * np.sin(np.pi * freq * phase) * (label > 0))
    bias = 1.0 + 0.1 * np.tensordot(rng.uniform(-1, 1, spatial_dims), grid, axes=1)
    image = image * bias * rng.uniform(0.9, 1.1) + rng.normal(0.0, noise, size)
    return image.astype(np.float32), label


def _dataset_json(spatial_dims: int, num_classes: int, num_train: int, file_ending: str) -> dict:
    return {
        "name": f"phantom{spatial_dims}d",
        "description": "fusionseg synthetic phantoms (textured noisy ellipses/ellipsoids)",
        "channel_names": {"0": "phantom"},
        "labels": {"background": 0, **{f"class{k}": k for k in range(1, num_classes)}},
        "numTraining": num_train,
        "file_ending": file_ending,
    }


def make_phantom_dataset(
    root: str | Path,
    spatial_dims: int = 2,
    num_train: int = 16,
    num_test: int = 4,
    size: Sequence[int] | None = None,
    num_classes: int = 3,
    seed: int = 0,
    noise: float = 0.08,
) -> Path:
    """Write a phantom dataset to ``root`` and return ``root``.

    3D: nnU-Net layout ``imagesTr/phantom_000_0000.nii.gz``, ``labelsTr/phantom_000.nii.gz``,
    ``imagesTs/``, ``labelsTs/`` and ``dataset.json`` (1 mm spacing, int16 intensities ×1000).
    2D: ``images/phantom_000.png`` (8-bit grey, intensity ×200), ``masks/phantom_000.png`` (class indices, or
    0/255 when binary), ``test/images``, ``test/masks`` and a ``dataset.json`` with label names.
    ``noise`` is the Gaussian σ of :func:`phantom`.
    """
    size = _check_args(spatial_dims, size, num_classes)
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train} and {num_test}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = [("train", i) for i in range(num_train)] + [("test", i) for i in range(num_test)]
    if spatial_dims == 3:
        import nibabel as nib

        dirs = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
        affine[:3, 3] = [-s / 2.0 for s in size]
        for split, i in splits:
            image, label = phantom(3, size, num_classes, rng, noise)
            img_dir, lbl_dir = (root / d for d in dirs[split])
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            case = f"phantom_{i:03d}" if split == "train" else f"phantom_test_{i:03d}"
            vol = nib.Nifti1Image(np.round(np.clip(image, -1, 3) * 1000).astype(np.int16), affine)
            seg = nib.Nifti1Image(label, affine)
            for img in (vol, seg):
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
            nib.save(vol, str(img_dir / f"{case}_0000.nii.gz"))
            nib.save(seg, str(lbl_dir / f"{case}.nii.gz"))
        meta = _dataset_json(3, num_classes, num_train, ".nii.gz")
    else:
        from PIL import Image

        dirs = {"train": ("images", "masks"), "test": ("test/images", "test/masks")}
        for split, i in splits:
            image, label = phantom(2, size, num_classes, rng, noise)
            img_dir, lbl_dir = (root / d for d in dirs[split])
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            case = f"phantom_{i:03d}"
            Image.fromarray(np.round(np.clip(image * 200, 0, 255)).astype(np.uint8)).save(img_dir / f"{case}.png")
            mask = label * np.uint8(255) if num_classes == 2 else label
            Image.fromarray(mask).save(lbl_dir / f"{case}.png")
        meta = _dataset_json(2, num_classes, num_train, ".png")
        meta["channel_names"] = {"0": "grey"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
