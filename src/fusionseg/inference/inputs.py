"""The cases of a prediction input: a file, a folder of images (channels ``_0000``…), or DICOM series.

Example:
    >>> find_inputs(Path("imagesTs"), in_channels=2)
    [('case1', [Path('imagesTs/case1_0000.nii.gz'), Path('imagesTs/case1_0001.nii.gz')])]
"""

from __future__ import annotations

from pathlib import Path

from fusionseg.data.formats import IMAGE_EXTENSIONS
from fusionseg.data.formats import split_extension as _split_ext
from fusionseg.errors import InputError

__all__ = ["find_inputs"]


def find_inputs(source: Path, in_channels: int = 1) -> list[tuple[str, list[Path]]]:
    """Cases to predict: a file, or every image file in a folder → [(case_id, [channel files])].

    With ``in_channels > 1``, nnU-Net style names ``CASE_0000.nii.gz, CASE_0001.nii.gz, ...`` are grouped
    into one case; otherwise each file is a case (e.g. an RGB PNG carries its channels itself).
    DICOM series count as files: ``source`` may be a series folder, and a folder's sub-folders holding
    series are cases (named by the sub-folder, or by the series UID where it holds several).
    """
    from fusionseg.data import dicom_series

    source = Path(source)
    own_series = dicom_series(source) if source.is_dir() else []
    if source.is_file():
        files = [source]
    elif own_series:
        files = own_series
    elif source.is_dir():
        visible = sorted(p for p in source.iterdir() if not p.name.startswith("."))
        files = [p for p in visible if p.is_file() and _split_ext(p)[1] in IMAGE_EXTENSIONS]
        for folder in (p for p in visible if p.is_dir()):
            # a folder of .dcm files that hold no readable series is a case that fails in one line, not skipped
            files += dicom_series(folder) or ([folder] if _has_dicom_names(folder) else [])
        if not files:
            raise InputError(
                f"{source} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) and no folders of DICOM slices"
            )
    else:
        raise InputError(f"input {source} does not exist; pass an image file or a folder of images")
    if in_channels == 1:
        return [(_case_id(path, strip_any_channel=False), [path]) for path in files]
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(_case_id(path, strip_any_channel=True), []).append(path)
    for cid, paths in groups.items():
        if len(paths) not in (1, in_channels):  # one file may carry every channel (RGB PNG, 4-D NIfTI)
            raise InputError(
                f"case {cid!r} has {len(paths)} channel files but the model expects {in_channels}; "
                f"name them {cid}_0000 ... {cid}_{in_channels - 1:04d}"
            )
    return list(groups.items())


def _has_dicom_names(folder: Path) -> bool:
    """Whether ``folder`` holds a visible file named like a DICOM slice (``.dcm``, ``.dicom``, ``.ima``)."""
    return any(p.suffix.lower() in (".dcm", ".dicom", ".ima") and not p.name.startswith(".") for p in folder.iterdir())


def _case_id(path: Path, strip_any_channel: bool) -> str:
    """File name without extension and without an nnU-Net channel suffix (``_0000`` only, unless grouping)."""
    stem, _ = _split_ext(path)
    base, _, idx = stem.rpartition("_")
    if base and len(idx) == 4 and idx.isdigit() and (strip_any_channel or idx == "0000"):
        return base
    return stem
