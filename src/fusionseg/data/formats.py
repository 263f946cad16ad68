"""One registry of file formats, used for reading (datasets, images, labels), predicting and evaluating.

Each :class:`FileFormat` names its extensions, the spatial dims it holds, whether one file can
carry several channels, its reader/writer, and the extension a prediction (label map) and class
probabilities are written with for an input of that format:

========== ======================= ====== ======== ============ =============
format     extensions              dims   channels prediction   probabilities
========== ======================= ====== ======== ============ =============
nifti      .nii.gz .nii            3      yes      same         same
nrrd       .nrrd .nhdr             2/3    yes      .nrrd        .nrrd
metaimage  .mha .mhd               2/3    yes      .mha         .mha
gipl       .gipl .gipl.gz          2/3    no       same         .mha
png        .png                    2      RGB      .png         .npz
bmp        .bmp                    2      RGB      .png         .npz
tiff       .tif .tiff              2      RGB      same         .npz
jpeg       .jpg .jpeg (images)     2      RGB      .png         .npz
npz        .npz (probabilities)    2/3    yes      —            .npz
dicom      a folder of slices      3      no       .nii.gz      .nii.gz
dicom-seg  .dcm (SEG, written)     3      no       —            —
========== ======================= ====== ======== ============ =============

Detached-header inputs (``.nhdr``, ``.mhd``) are written as their single-file twin so a file can be
renamed into place atomically; JPEG is lossy and BMP holds 8 bits, so their label maps are PNG.
GIPL keeps spacing and origin but no direction. A DICOM series is a folder (or ``FOLDER/SERIES_UID``
for one of several series in a folder, see :mod:`~fusionseg.data.backends.dicom_io`); its label
maps are NIfTI, or DICOM SEG (``.dcm``, highdicom) with ``predict --output-format dicom-seg``.

Example:
    >>> format_of("scan_0000.mhd").name, prediction_extension("scan_0000.mhd")
    ('metaimage', '.mha')
    >>> split_extension("a/case_0000.nii.gz")
    ('case_0000', '.nii.gz')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.data.backends import dicom_io, dicom_seg, itk_io, nifti_io, npz_io, nrrd_io, pillow_io
from fusionseg.errors import InputError

__all__ = [
    "DATA_FILE_EXTENSIONS",
    "DICOM",
    "EXTENSIONS_2D",
    "EXTENSIONS_3D",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "LABEL_EXTENSIONS",
    "OUTPUT_FORMATS",
    "FileFormat",
    "format_of",
    "prediction_extension",
    "probability_extension",
    "split_extension",
    "strip_extension",
]

Reader = Callable[[Path, bool], "tuple[np.ndarray, dict]"]
Writer = Callable[..., None]


@dataclass(frozen=True)
class FileFormat:
    """A file format: extensions, capabilities and I/O functions.

    ``reader(path, label) -> (array (C, *S), meta)``; ``header_reader(path) -> meta``;
    ``writer(array, meta, path, channels=False)`` writes a label map (*S) or, with ``channels``,
    float channels (C, *S) — None where the format cannot store results (JPEG).
    ``prediction_extension`` / ``probability_extension``: None means the input's own extension.
    """

    name: str
    extensions: tuple[str, ...]
    spatial_dims: tuple[int, ...]
    multichannel: bool
    reader: Reader
    header_reader: Callable[[Path], dict]
    writer: Writer | None
    prediction_extension: str | None = None
    probability_extension: str | None = None
    lossless: bool = True
    dataset: bool = True  # usable for dataset images and labels (npz holds probabilities only)
    folder: bool = False  # a folder (DICOM series), not a file

    @property
    def holds_labels(self) -> bool:
        """Whether label maps can be stored in (and read from) this format."""
        return self.dataset and self.lossless and self.writer is not None


def _fmt(name: str, extensions: tuple[str, ...], dims: tuple[int, ...], backend: Any, **options: Any) -> FileFormat:
    """A registry entry whose reader, header reader and writer come from ``backend`` (a module)."""
    multichannel = options.pop("multichannel", True)
    writer = options.pop("writer") if "writer" in options else backend.write
    return FileFormat(name, extensions, dims, multichannel, backend.read, backend.read_header, writer, **options)


FORMATS: tuple[FileFormat, ...] = (
    _fmt("nifti", (".nii.gz", ".nii"), (3,), nifti_io),
    _fmt("nrrd", (".nrrd", ".nhdr"), (2, 3), nrrd_io, prediction_extension=".nrrd", probability_extension=".nrrd"),
    _fmt("metaimage", (".mha", ".mhd"), (2, 3), itk_io, prediction_extension=".mha", probability_extension=".mha"),
    _fmt("gipl", (".gipl", ".gipl.gz"), (2, 3), itk_io, multichannel=False, probability_extension=".mha"),
    _fmt("png", (".png",), (2,), pillow_io, probability_extension=".npz"),
    _fmt("bmp", (".bmp",), (2,), pillow_io, prediction_extension=".png", probability_extension=".npz"),
    _fmt("tiff", (".tif", ".tiff"), (2,), pillow_io, probability_extension=".npz"),
    _fmt(  # lossy: images only, label maps are never written as JPEG
        "jpeg",
        (".jpg", ".jpeg"),
        (2,),
        pillow_io,
        writer=None,
        lossless=False,
        prediction_extension=".png",
        probability_extension=".npz",
    ),
    _fmt("npz", (".npz",), (2, 3), npz_io, probability_extension=".npz", dataset=False),
    _fmt(  # images only: found as folders, never by extension; label maps go to NIfTI or DICOM SEG
        "dicom",
        (),
        (3,),
        dicom_io,
        writer=None,
        prediction_extension=".nii.gz",
        probability_extension=".nii.gz",
        folder=True,
    ),
    _fmt("dicom-seg", (".dcm",), (3,), dicom_seg, multichannel=False, dataset=False),
)
DICOM = FORMATS[-2]

# Raw data files that sit next to detached headers (.mhd, .nhdr): skipped when folders are listed.
DATA_FILE_EXTENSIONS = (".raw", ".zraw", ".raw.gz")

_BY_EXTENSION = {ext: fmt for fmt in FORMATS for ext in fmt.extensions}
# Longest first, so ".nii.gz" wins over ".gz" and ".gipl.gz" over ".gz".
_KNOWN = sorted([*_BY_EXTENSION, *DATA_FILE_EXTENSIONS], key=len, reverse=True)

IMAGE_EXTENSIONS = tuple(ext for fmt in FORMATS if fmt.dataset for ext in fmt.extensions)
LABEL_EXTENSIONS = tuple(ext for fmt in FORMATS if fmt.holds_labels for ext in fmt.extensions)
EXTENSIONS_2D = tuple(ext for fmt in FORMATS if fmt.dataset and fmt.spatial_dims == (2,) for ext in fmt.extensions)
EXTENSIONS_3D = tuple(ext for fmt in FORMATS if fmt.dataset and 3 in fmt.spatial_dims for ext in fmt.extensions)


def split_extension(path: str | Path) -> tuple[str, str]:
    """``"a/case_0000.nii.gz"`` → ``("case_0000", ".nii.gz")``; the extension is lower-case."""
    name = Path(path).name
    if dicom_io.SERIES_UID.match(name):  # FOLDER/SERIES_UID: one of several DICOM series
        return name, ""
    lower = name.lower()
    for ext in _KNOWN:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix.lower()


def strip_extension(path: str | Path) -> str:
    """File name without its (possibly two-part) extension: the case id of a label file."""
    return split_extension(path)[0]


def format_of(path: str | Path) -> FileFormat:
    """The :class:`FileFormat` of ``path`` from its extension (a folder: a DICOM series); InputError for others."""
    if dicom_io.is_series_path(path):
        return DICOM
    ext = split_extension(path)[1]
    fmt = _BY_EXTENSION.get(ext)
    if fmt is None:
        raise InputError(
            f"{path}: unsupported file extension {ext or '(none)'!r}; use one of {', '.join(IMAGE_EXTENSIONS)} "
            "or a folder of DICOM slices"
        )
    return fmt


# ``predict --output-format``: "auto" is the input's own format where it holds labels (DICOM series: NIfTI).
OUTPUT_FORMATS = {"auto": None, "nifti": ".nii.gz", "dicom-seg": ".dcm"}


def prediction_extension(image_path: str | Path, output_format: str = "auto") -> str:
    """Extension of the label map predicted for ``image_path`` (its own format where that is lossless).

    ``output_format`` ``"nifti"`` or ``"dicom-seg"`` (see :data:`OUTPUT_FORMATS`) overrides it; an
    input that cannot be written that way is an InputError.
    """
    fmt = format_of(image_path)
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"unknown output format {output_format!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    if output_format == "dicom-seg" and fmt.name != "dicom":
        raise InputError(f"{image_path}: --output-format dicom-seg needs DICOM series (folders of slices) as input")
    if output_format == "nifti" and 3 not in fmt.spatial_dims:
        raise InputError(f"{image_path}: --output-format nifti holds 3D images; use auto for {fmt.name} images")
    return OUTPUT_FORMATS[output_format] or fmt.prediction_extension or split_extension(image_path)[1]


def probability_extension(image_path: str | Path) -> str:
    """Extension of the class probabilities written for ``image_path`` (``.npz`` for 2D raster formats)."""
    fmt = format_of(image_path)
    return fmt.probability_extension or split_extension(image_path)[1]
