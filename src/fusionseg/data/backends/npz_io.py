"""NumPy ``.npz`` for class probabilities of 2D images (raster formats cannot hold float channels).

Keys: ``probabilities`` (C, *S) float, ``affine`` ((D+1, D+1) of the input image), ``spacing``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionseg.data.backends.common import corrupt, meta_dict
from fusionseg.errors import InputError

__all__ = ["read", "read_header", "write"]

KEY = "probabilities"


def read(path: Path, label: bool) -> tuple[np.ndarray, dict]:
    if label:
        raise InputError(f"{path}: .npz files hold probabilities, not label maps; pass the label image instead")
    try:
        with np.load(path) as npz:
            data = np.asarray(npz[KEY])
            n = data.ndim - 1
            affine = np.asarray(npz["affine"]) if "affine" in npz else np.eye(n + 1)
            spacing = tuple(npz["spacing"]) if "spacing" in npz else (1.0,) * n
    except Exception as exc:
        raise corrupt(path, exc) from exc
    return data, meta_dict(path, "npz", affine, spacing, data.shape[1:], data.shape[0], {})


def read_header(path: Path) -> dict:
    return read(path, label=False)[1]


def write(array: np.ndarray, meta: dict, path: Path, channels: bool = True) -> None:
    if not channels:
        raise InputError(f"{path}: .npz holds probabilities (C, *S); write label maps as an image format")
    with open(path, "wb") as f:
        np.savez_compressed(
            f,
            **{KEY: array},  # type: ignore[arg-type]  # numpy's stub: a ** dict could fill allow_pickle
            affine=np.asarray(meta["affine"], dtype=np.float64),
            spacing=np.asarray(meta["spacing"], dtype=np.float64),
        )
