"""Checks for bad input. Each failure is an :class:`~fusionseg.errors.InputError` with a one-line
message naming the file and the fix.

``load_checked`` reads one case (all channel files + optional label) and runs every check; the
training/eval transforms call it, and ``validate_case`` / ``validate_dataset`` run it up front
so that errors surface before training starts (MONAI wraps errors raised inside a ``Dataset``
in ``RuntimeError``; :func:`find_input_error` digs the ``InputError`` out again).

Example:
    >>> validate_dataset(scan_dataset("data/phantom2d"), pre)   # raises InputError on the first bad file
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionseg.data.io import read_image, read_label
from fusionseg.data.preprocessing import Preprocessing
from fusionseg.errors import InputError, find_input_error

__all__ = [
    "check_channels",
    "check_finite",
    "check_geometry",
    "check_label_values",
    "find_input_error",
    "load_checked",
    "validate_case",
    "validate_dataset",
]


def check_finite(array: np.ndarray, path: str | Path) -> None:
    """InputError when ``array`` holds NaN or Inf."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise InputError(f"{path}: {bad} NaN/Inf voxel(s); replace them (e.g. with 0) before training or inference")


def check_label_values(label: np.ndarray, num_classes: int, path: str | Path, ignore_label: int | None = None) -> None:
    """InputError when ``label`` holds values outside ``0..num_classes-1`` (and the ignore label, if any)."""
    if label.size == 0:
        raise InputError(f"{path}: label map is empty")
    if int(label.min()) >= 0 and int(label.max()) < num_classes:
        return
    values = np.unique(label)
    bad = [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_label]
    if not bad:
        return
    allowed = f"0..{num_classes - 1}" + (f" and the ignore label {ignore_label}" if ignore_label is not None else "")
    raise InputError(
        f"{path}: label values {bad[:5]} are outside the declared classes {allowed}; "
        "fix the label map or the labels in dataset.json"
    )


def check_channels(num_channels: int, expected: int, path: str | Path) -> None:
    """InputError when an image has a different channel count than the dataset declares."""
    if num_channels != expected:
        raise InputError(
            f"{path}: has {num_channels} channel(s) but the dataset/model expects {expected}; "
            "convert the image (e.g. RGB ↔ grey) or fix channel_names"
        )


def _spatial_tolerance(spacing: Sequence[float]) -> float:
    return 1e-3 * max(1.0, float(max(spacing)))


def check_geometry(reference: dict, other: dict, what: str = "label") -> None:
    """InputError unless ``other`` has the same spatial shape and affine as ``reference`` (both reader metas)."""
    ref_shape, shape = tuple(reference["spatial_shape"]), tuple(other["spatial_shape"])
    if ref_shape != shape:
        raise InputError(
            f"{other['path']}: {what} shape {shape} differs from image {reference['path']} shape {ref_shape}; "
            f"resample the {what} onto the image grid"
        )
    a, b = np.asarray(reference["affine"]), np.asarray(other["affine"])
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=_spatial_tolerance(reference["spacing"])):
        sa = tuple(round(float(s), 4) for s in reference["spacing"])
        sb = tuple(round(float(s), 4) for s in other["spacing"])
        detail = f"spacing {sb} vs {sa}" if not np.allclose(sa, sb, rtol=1e-4) else "origin/direction differ"
        raise InputError(
            f"{other['path']}: {what} geometry does not match image {reference['path']} ({detail}); "
            f"resample the {what} onto the image grid"
        )


def load_checked(
    images: Sequence[str | Path], label: str | Path | None, pre: Preprocessing
) -> tuple[np.ndarray, dict, np.ndarray | None, dict | None]:
    """Read a case and check it against ``pre`` (from ``build_preprocessing``): dimensions, channels, labels.

    Returns ``(image (C, *S) float32, image_meta, label (*S) or None, label_meta or None)``.
    Channel files are stacked in order; all must share one grid.
    """
    if isinstance(images, (str, Path)):
        images = [images]
    if not images:
        raise InputError("no image files given; pass one file per channel")
    arrays: list[np.ndarray] = []
    metas: list[dict] = []
    for path in images:
        array, meta = read_image(path)
        check_finite(array, path)
        if meta["spatial_shape"] != tuple(array.shape[1:]):
            meta["spatial_shape"] = tuple(array.shape[1:])
        if metas:
            check_geometry(metas[0], meta, what="channel")
        arrays.append(array)
        metas.append(meta)
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    image_meta = dict(metas[0])
    image_meta["paths"] = [str(p) for p in images]
    spatial_dims, layout = pre.spatial_dims, pre.label_layout
    if image.ndim - 1 != spatial_dims:
        if spatial_dims == 2 and image.ndim == 4 and image.shape[-1] == 1:  # a 2D slice stored as NIfTI
            image = image[..., 0]
        else:
            raise InputError(
                f"{images[0]}: {image.ndim - 1}D image but the dataset/model is {spatial_dims}D; "
                "use matching data or another model"
            )
    check_channels(image.shape[0], pre.in_channels, images[0] if len(images) == 1 else ", ".join(map(str, images)))
    if label is None:
        return image, image_meta, None, None
    label_array, label_meta = read_label(label, sorted(layout.names), layout.ignore_label)
    check_geometry(metas[0], label_meta)
    if label_array.ndim != spatial_dims and spatial_dims == 2 and label_array.ndim == 3:
        label_array = label_array[..., 0]
    check_label_values(label_array, layout.num_classes, label, layout.ignore_label)
    return image, image_meta, label_array, label_meta


def validate_case(case, pre: Preprocessing) -> None:
    """Load ``case`` (a :class:`~fusionseg.data.Case`) once and run every check; InputError on the first problem."""
    load_checked(case.images, case.label, pre)


def validate_dataset(info, pre: Preprocessing, include_test: bool = False) -> int:
    """Validate every training case (and test cases with ``include_test``); returns how many were checked."""
    cases = list(info.cases) + (list(info.test_cases) if include_test else [])
    for case in cases:
        validate_case(case, pre)
    return len(cases)
