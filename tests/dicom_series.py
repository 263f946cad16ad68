"""Write small DICOM series for tests: a crop of the shipped brain volume, one .dcm file per slice (SimpleITK)."""

from __future__ import annotations

import locale
from pathlib import Path

import SimpleITK as sitk

from fusionseg.resources import real_data_path


def brain_crop(size: tuple[int, int, int] = (32, 32, 8)) -> sitk.Image:
    """An int16 crop of the shipped T1 (MNI, 1 mm) through the brain, with an oblique direction."""
    t1 = sitk.ReadImage(str(real_data_path() / "brain3d" / "t1.nii.gz"))
    x, y, z = size
    crop = sitk.Cast(t1[74 - x // 2 : 74 + x // 2, 100 - y // 2 : 100 + y // 2, 80 : 80 + z], sitk.sitkInt16)
    rotation = sitk.VersorTransform((0.0, 0.0, 1.0), 0.3).GetMatrix()  # 0.3 rad about z: an oblique series
    crop.SetDirection(rotation)
    crop.SetSpacing((0.9, 0.9, 2.5))
    return crop


def write_series(image: sitk.Image, folder: Path, series_uid: str, number: int = 1, rows: int | None = None) -> Path:
    """``image`` (3D) as one DICOM file per slice in ``folder``; ``rows`` crops every other slice (a mixed series).

    GDCM's writer sets the C locale for the whole process (Python then reads text as ASCII); it is restored.
    """
    kept = locale.setlocale(locale.LC_ALL)
    try:
        return _write_slices(image, folder, series_uid, number, rows)
    finally:
        locale.setlocale(locale.LC_ALL, kept)


def _write_slices(image: sitk.Image, folder: Path, series_uid: str, number: int, rows: int | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.8f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    sx, sy, sz = image.GetSpacing()
    for z in range(image.GetDepth()):
        plane = image[:, :, z] if rows is None or z % 2 == 0 else image[:, :rows, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "0008|0018": f"{series_uid}.{z + 1}",
            "0008|0060": "MR",
            "0010|0010": "Test^Brain",
            "0010|0020": "brain3d",
            "0020|000d": "1.2.826.0.1.3680043.9.7.1",
            "0020|000e": series_uid,
            "0020|0011": str(number),
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": orientation,
            "0020|0052": "1.2.826.0.1.3680043.9.7.2",
            "0028|0030": f"{sy:.6f}\\{sx:.6f}",
            "0018|0050": f"{sz:.6f}",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
        writer.Execute(plane)
    return folder
