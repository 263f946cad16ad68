"""DICOM Segmentation (SEG) objects through highdicom: label maps of a DICOM series written back as DICOM.

:func:`write` turns a label map on a series' grid (X, Y, Z) into one SEG file that references every
slice of its source series (one segment per class, numbered as the classes, labelled with the
class names of dataset.json); :func:`read_seg` reads a SEG back onto the grid of its source
series. highdicom and pydicom are the optional extra ``dicom`` (``pip install "fusionseg[dicom]"``).

Example:
    >>> image, meta = read_image("CT_series")                       # a folder of slices
    >>> write(labels, {**meta, "class_names": {"1": "liver"}}, Path("case.dcm"))
    >>> np.array_equal(read_seg("case.dcm", "CT_series"), labels)
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.data.backends.common import exception_line
from fusionseg.errors import InputError
from fusionseg.version import __version__

__all__ = ["NEEDS_HIGHDICOM", "highdicom_module", "read", "read_header", "read_seg", "write"]

NEEDS_HIGHDICOM = 'DICOM SEG needs highdicom; install the extra: pip install "fusionseg[dicom]"'


def highdicom_module() -> Any:
    """highdicom, or an InputError naming the extra."""
    try:
        import highdicom
    except ImportError as exc:
        raise InputError(NEEDS_HIGHDICOM) from exc
    return highdicom


def _descriptions(hd: Any, max_label: int, names: dict) -> list:
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="fusionseg", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=str(names.get(str(value), f"class {value}"))[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for value in range(1, max_label + 1)
    ]


def write(array: np.ndarray, meta: dict, path: Path, channels: bool = False) -> None:
    """Write label map ``array`` (X, Y, Z) on the grid of the DICOM series in ``meta`` as a SEG to ``path``.

    Segment ``k`` holds class ``k`` (every class 1..K-1 gets a segment, present or not: ``K`` from
    ``meta["num_classes"]`` where given); labels come from ``meta["class_names"]`` ({"1": "tumour"}).
    """
    if channels:
        raise InputError(f"{path}: a DICOM SEG holds label maps, not float channels; write probabilities as .nii.gz")
    if meta.get("format") != "dicom":
        raise InputError(
            f"{meta.get('path', path)}: DICOM SEG output needs a DICOM series as input (a folder of slices); "
            "use the default output format for other images"
        )
    hd = highdicom_module()
    import pydicom

    sources = [pydicom.dcmread(name, stop_before_pixels=True) for name in meta["header"]["files"]]  # headers suffice
    frames = np.ascontiguousarray(np.transpose(np.asarray(array)))  # (Z, Y, X): one frame per source slice
    max_label = max(int(frames.max()) if frames.size else 0, int(meta.get("num_classes") or 1) - 1, 1)
    try:
        seg = _segmentation(hd, sources, frames, max_label, meta.get("class_names") or {})
    except ValueError as exc:  # e.g. sources without a Frame of Reference UID
        raise InputError(
            f"{meta.get('path')}: cannot write a DICOM SEG for this series ({exception_line(exc)})"
        ) from exc
    seg.save_as(str(path))


def _segmentation(hd: Any, sources: list, frames: np.ndarray, max_label: int, names: dict) -> Any:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames.astype(np.uint8 if max_label < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(hd, max_label, names),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="fusionseg",
        manufacturer_model_name="fusionseg",
        software_versions=__version__,
        device_serial_number="0",
        series_description="fusionseg segmentation",
    )


def read_seg(seg_path: str | Path, series: str | Path) -> np.ndarray:
    """Label map (X, Y, Z) of a SEG on the grid of its source ``series`` (a series path, see ``dicom_io``)."""
    from fusionseg.data.backends.dicom_io import series_files

    hd = highdicom_module()
    import pydicom

    seg = hd.seg.segread(str(seg_path))
    _, files = series_files(series)
    uids = [pydicom.dcmread(name, stop_before_pixels=True).SOPInstanceUID for name in files]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    return np.ascontiguousarray(np.transpose(frames))


def read(path: Path, label: bool) -> tuple[np.ndarray, dict]:
    raise InputError(
        f"{path}: a single DICOM file; pass the folder of its series (DICOM SEG files are read with "
        "fusionseg.data.read_dicom_seg(seg, series))"
    )


def read_header(path: Path) -> dict:
    return read(path, label=False)[1]
