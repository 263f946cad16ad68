"""DICOM series (a folder of slices) read with their geometry through SimpleITK's ImageSeriesReader (GDCM).

A series is addressed by a path: a folder holding one series, or ``FOLDER/SERIES_INSTANCE_UID`` for
one of several series in a folder (that path does not exist on disk; :func:`series_paths` lists
them). Slices are sorted along the slice normal by GDCM; arrays come back (C, X, Y, Z) with a RAS+
affine like the other readers. A series whose slices differ in size or orientation ("mixed"), or
that GDCM cannot read, is one InputError line.

Example:
    >>> series_paths(Path("CT_folder"))         # one series: [CT_folder]; several: [CT_folder/1.2.3..., ...]
    >>> image, meta = read(Path("CT_folder"), label=False)
    >>> meta["header"]["files"][:1]             # slice files in the order of the array's Z axis
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.data.backends.common import exception_line, meta_dict
from fusionseg.data.backends.itk_io import itk_affine, sitk_module
from fusionseg.errors import InputError

__all__ = ["SERIES_UID", "holds_dicom", "is_series_path", "read", "read_header", "series_files", "series_paths"]

SERIES_UID = re.compile(r"^\d+(\.\d+)+$")


def _sitk():
    return sitk_module("reading DICOM series")


def _series_ids(folder: Path) -> list[str]:
    return list(_sitk().ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def is_series_path(path: str | Path) -> bool:
    """Whether ``path`` names a DICOM series: a folder, or ``FOLDER/UID`` that does not exist (no disk scan)."""
    path = Path(path)
    return path.is_dir() or (not path.exists() and bool(SERIES_UID.match(path.name)) and path.parent.is_dir())


def holds_dicom(folder: Path) -> bool:
    """Whether a visible file of ``folder`` ends in ``.dcm`` or starts with DICOM's preamble (cheap pre-check)."""
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
            return True
        with open(path, "rb") as f:
            if f.read(132)[128:] == b"DICM":
                return True
    return False


def series_paths(folder: str | Path) -> list[Path]:
    """The series of ``folder`` (its own files only): ``[]``, ``[folder]`` (one series) or ``[folder/UID, ...]``."""
    folder = Path(folder)
    if not folder.is_dir() or not holds_dicom(folder):
        return []
    ids = sorted(_series_ids(folder))
    return [folder] if len(ids) == 1 else [folder / uid for uid in ids]


def series_files(path: str | Path) -> tuple[str, list[str]]:
    """``(series UID, slice files in reading order)`` of a series path; InputError when there is none."""
    path = Path(path)
    folder, uid = (path, None) if path.is_dir() else (path.parent, path.name)
    ids = _series_ids(folder)
    if not ids:
        raise InputError(f"{folder}: holds no DICOM series (no readable .dcm slices); pass a folder of DICOM slices")
    if uid is None:
        if len(ids) > 1:
            raise InputError(
                f"{folder}: holds {len(ids)} DICOM series; pass its parent folder (every series becomes a case) "
                f"or one series as {folder}/SERIES_UID"
            )
        uid = ids[0]
    elif uid not in ids:
        raise InputError(f"{path}: no series {uid} in {folder}; its series are {', '.join(sorted(ids))}")
    files = list(_sitk().ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    if not files:
        raise InputError(f"{path}: DICOM series {uid} has no readable slices; re-export it")
    return uid, files


def _check_uniform(path: Path, files: list[str]) -> None:
    """InputError for a mixed series: slices with another size, orientation or pixel type than the first,
    or not evenly spaced along the slice normal (a missing, duplicate or unreadable slice)."""
    sitk = _sitk()
    first = None
    positions = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except Exception as exc:
            message = f"{path}: cannot read slice {Path(name).name} ({exception_line(exc)}); re-export the series"
            raise InputError(message) from exc
        info = (tuple(reader.GetSize()[:2]), tuple(np.round(reader.GetDirection(), 4)), reader.GetNumberOfComponents())
        positions.append(np.asarray(reader.GetOrigin(), dtype=np.float64))
        if first is None:
            first = info
        elif info != first:
            raise InputError(
                f"{path}: mixed DICOM series: slice {Path(name).name} differs in size or orientation from "
                f"{Path(files[0]).name}; split the series into folders of like slices"
            )
    _check_even_spacing(path, files, positions, first[1] if first else ())


def _check_even_spacing(path: Path, files: list[str], positions: list[np.ndarray], direction: tuple) -> None:
    """InputError when slice positions along the normal have a gap or a repeat (ITK would only warn)."""
    if len(positions) < 3 or len(direction) < 9:
        return
    normal = np.asarray(direction, dtype=np.float64).reshape(3, 3)[:, 2]
    steps = np.diff(np.asarray(positions) @ normal)
    step = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - step) > 0.01 * abs(step) + 1e-4)
    if abs(step) < 1e-4 or len(bad):
        at = int(bad[0]) if len(bad) else 0
        raise InputError(
            f"{path}: DICOM slices are not evenly spaced ({Path(files[at]).name} → {Path(files[at + 1]).name}: "
            f"{steps[at]:.3g} mm, others {step:.3g} mm): a missing, duplicate or unreadable slice; re-export the series"
        )


def _read_series(path: Path):
    sitk = _sitk()
    uid, files = series_files(path)
    _check_uniform(path, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except Exception as exc:
        raise InputError(f"{path}: cannot read DICOM series {uid} ({exception_line(exc)}); re-export it") from exc
    return image, uid, files


def _meta(path: Path, image, uid: str, files: list[str]) -> dict:
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if image.GetDimension() != 3:
        raise InputError(f"{path}: {image.GetDimension()}D DICOM series; only 3D series are supported")
    header: dict[str, Any] = {"spacing": tuple(spacing), "origin": tuple(origin), "direction": tuple(direction)}
    header |= {"series_uid": uid, "files": list(files)}
    affine = itk_affine(tuple(spacing), tuple(origin), tuple(direction))
    return meta_dict(path, "dicom", affine, spacing, image.GetSize(), image.GetNumberOfComponentsPerPixel(), header)


def read_header(path: Path) -> dict:
    """Geometry of a series (its slices are read: a series has no header of its own)."""
    return read(path, label=True)[1]


def read(path: Path, label: bool) -> tuple[np.ndarray, dict]:
    """(array (C, X, Y, Z), meta) of a series; ``meta["header"]`` holds ``series_uid`` and ``files``."""
    sitk = _sitk()
    image, uid, files = _read_series(Path(path))
    meta = _meta(Path(path), image, uid, files)
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X[, C])
    data = np.moveaxis(array, -1, 0).transpose(0, 3, 2, 1) if array.ndim == 4 else np.transpose(array)[None]
    data = np.ascontiguousarray(data)
    return (data if label else data.astype(np.float32, copy=False)), meta
