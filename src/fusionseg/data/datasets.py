"""Dataset discovery: the nnU-Net/MSD layout (3D) and image/mask folders (2D).

``scan_dataset(root)`` finds the cases and the dataset description without loading voxels
(2D folders without a ``dataset.json`` read their masks once to find the label values).

Layouts:
    nnU-Net v2 / MSD::

        root/dataset.json            channel_names (or MSD "modality"), labels, file_ending
        root/imagesTr/CASE_0000.nii.gz, CASE_0001.nii.gz, ...   (one file per channel)
        root/labelsTr/CASE.nii.gz
        root/imagesTs/ (optional), root/labelsTs/ (optional)

    MSD-style files without ``_0000`` suffixes hold all channels in one (4D) file; a single
    ``CASE_0000`` file may also carry every declared channel (nnU-Net's RGB ``CASE_0000.png`` with
    channel_names R, G, B). ``file_ending`` may name any format of :mod:`fusionseg.data.formats`
    (NIfTI, NRRD/NHDR, MHA/MHD, GIPL, PNG, BMP, TIFF). dataset.json's labels may declare regions
    and an ignore label (see :mod:`fusionseg.data.labels`).

    2D folders (:mod:`fusionseg.data.layouts_2d`; Kvasir-SEG unpacks this way)::

        root/images/NAME.png|jpg|tif   (grey or RGB)
        root/masks/NAME.png|jpg|tif    (also labels/; NAME, NAME_mask, NAME_label or NAME_segmentation)
        root/test/images/, root/test/masks/ (optional)
        root/dataset.json (optional: channel_names and labels)

    ISIC 2018 task 1 (``ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg`` +
    ``ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png``; test or validation
    folders as test cases) and CVC-ClinicDB (``Original/`` + ``Ground Truth/``, equal names) are read
    as they unpack. Binary masks follow :data:`fusionseg.data.io.BINARY_MASK_RULE` (``DatasetInfo.mask_rule``).

Example:
    >>> info = scan_dataset("data/Task02_Heart")
    >>> info.layout, info.spatial_dims, info.num_classes, len(info.cases)
    ('nnunet', 3, 2, 20)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionseg.data.backends.dicom_io import holds_dicom
from fusionseg.data.backends.dicom_io import series_paths as dicom_series
from fusionseg.data.formats import (
    DATA_FILE_EXTENSIONS,
    EXTENSIONS_2D,
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    format_of,
    split_extension,
)
from fusionseg.data.io import BINARY_MASK_RULE, LOSSY_CLASS_RULE, read_header, read_label
from fusionseg.data.json_input import read_json_file
from fusionseg.data.labels import LabelLayout
from fusionseg.data.layouts_2d import DOCUMENT_EXTENSIONS, Layout2D, find_layout, held_out_folders, mask_folder
from fusionseg.data.relabel import original_label_values
from fusionseg.errors import InputError

__all__ = ["Case", "DatasetInfo", "infer_modality", "scan_dataset"]

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_MASK_SUFFIXES = ("", "_mask", "_label", "_labels", "_seg", "_segmentation")
_MRI_NAMES = ("mri", "mr", "t1", "t1w", "t1c", "t1ce", "t1gd", "t2", "t2w", "flair", "adc", "dwi", "pd", "swi")


@dataclass
class Case:
    """One sample: its image file(s) (one per channel, or one multi-channel file) and optional label."""

    case_id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class DatasetInfo:
    """What :func:`scan_dataset` found.

    ``labels`` maps label value → name (0 = background, ignore label excluded); ``num_classes`` counts
    them. Region-based datasets also set ``regions`` (label values per region, dataset.json order),
    ``region_names`` and ``regions_class_order``; ``ignore_label`` is the value of unannotated voxels.
    ``use_mask_for_norm`` is dataset.json's optional override of nnU-Net's mask rule (None: not given).
    """

    layout: str
    spatial_dims: int
    cases: list[Case]
    test_cases: list[Case]
    channel_names: list[str]
    labels: dict[int, str]
    num_classes: int
    modality: str
    root: Path | None = None
    name: str = ""
    file_ending: str = ""
    ignore_label: int | None = None
    regions: list[tuple[int, ...]] | None = None
    region_names: list[str] | None = None
    regions_class_order: list[int] | None = None
    use_mask_for_norm: bool | None = None
    mask_rule: str | None = None  # how binary 2D masks were read (stated once in the training log)
    original_labels: list[int] | None = None  # original value of each label value (after `fusionseg relabel`)

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_layout(self) -> LabelLayout:
        """The labels as a :class:`~fusionseg.data.labels.LabelLayout` (classes, regions, ignore label)."""
        return LabelLayout(
            names=dict(self.labels),
            regions=tuple(tuple(r) for r in self.regions) if self.regions is not None else None,
            region_names=tuple(self.region_names) if self.region_names is not None else None,
            regions_class_order=tuple(self.regions_class_order) if self.regions_class_order is not None else None,
            ignore_label=self.ignore_label,
        )


def infer_modality(channel_names: list[str]) -> str:
    """``"CT"`` if any channel is CT, ``"MRI"`` if any is an MR contrast, else ``"other"``."""
    names = [str(n).strip().lower() for n in channel_names]
    if any(n == "ct" or n.startswith("ct") for n in names):
        return "CT"
    if any(n in _MRI_NAMES or n.startswith("mr") for n in names):
        return "MRI"
    return "other"


def _listdir(folder: Path, allowed: tuple[str, ...], what: str, skip_documents: bool = False) -> list[Path]:
    """Visible files and DICOM series of ``folder`` (sorted); InputError for an unsupported extension.

    Raw data files of detached headers (``.raw``, ``.zraw`` beside ``.mhd``/``.nhdr``) are skipped, and
    with ``skip_documents`` licence / read-me files (``LICENSE.txt``) too.
    """
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():  # a DICOM series (a folder of slices) is an image; other folders are skipped
            series = dicom_series(path)
            if not series and (_CHANNEL_SUFFIX.match(path.name) or holds_dicom(path)):  # else a case is lost silently
                raise InputError(
                    f"{path}: folder holds no readable DICOM series; add or re-export the slices, or remove it"
                )
            files += series
            continue
        ext = split_extension(path)[1]
        if ext in DATA_FILE_EXTENSIONS or (skip_documents and ext in DOCUMENT_EXTENSIONS):
            continue
        if ext not in allowed:
            raise InputError(
                f"{path}: unsupported file extension {ext or '(none)'!r} in {what}; "
                f"use one of {', '.join(allowed)} or move the file out of the folder"
            )
        files.append(path)
    return files


def _read_json(path: Path) -> dict:
    data = read_json_file(path, "fix the JSON syntax")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with channel_names and labels")
    return data


def _parse_channels(meta: dict, path: Path) -> list[str] | None:
    raw = meta.get("channel_names", meta.get("modality"))
    if raw is None:
        return None
    if not raw or not isinstance(raw, (list, dict)):
        raise InputError(f'{path}: "channel_names" must name at least one channel, e.g. {{"0": "CT"}}')
    if isinstance(raw, list):
        return [str(n) for n in raw]
    if not isinstance(raw, dict) or not all(str(k).isascii() and str(k).isdigit() for k in raw):
        raise InputError(f'{path}: "channel_names" must map channel indices to names, e.g. {{"0": "CT"}}')
    keys = sorted(int(k) for k in raw)
    if keys != list(range(len(keys))):
        raise InputError(f"{path}: channel indices {keys} must be 0..{len(keys) - 1} without gaps")
    return [str(raw[str(k)] if str(k) in raw else raw[k]) for k in keys]


def _parse_labels(meta: dict, path: Path) -> LabelLayout | None:
    raw = meta.get("labels")
    if raw is None:
        return None
    return LabelLayout.from_dataset_json(raw, meta.get("regions_class_order"), path)


def _label_fields(layout: LabelLayout) -> dict:
    """DatasetInfo fields describing ``layout``."""
    return {
        "labels": dict(layout.names),
        "num_classes": layout.num_classes,
        "ignore_label": layout.ignore_label,
        "regions": list(layout.regions) if layout.regions is not None else None,
        "region_names": list(layout.region_names) if layout.region_names is not None else None,
        "regions_class_order": list(layout.regions_class_order) if layout.regions_class_order is not None else None,
    }


def _mask_override(meta: dict, path: Path) -> bool | None:
    value = meta.get("use_mask_for_norm")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(v, bool) for v in value):  # nnU-Net v1 style: one per channel
        return any(value)
    raise InputError(f'{path}: "use_mask_for_norm" must be true or false, got {value!r}')


# ------------------------------------------------------------------------------------------ nnU-Net


def _carries_all_channels(path: Path, num_channels: int) -> bool:
    """Whether one file holds every declared channel (an RGB PNG, a 4D NIfTI)."""
    return format_of(path).multichannel and read_header(path)["num_channels"] == num_channels


def _group_cases(files: list[Path], num_channels: int, folder: Path) -> list[Case]:
    """Group ``CASE_XXXX.ext`` channel files into cases (or one case per file without suffixes)."""
    stems = [split_extension(f)[0] for f in files]
    matches = [_CHANNEL_SUFFIX.match(s) for s in stems]
    if matches and all(m is None for m in matches):  # MSD style: channels inside each file
        return [Case(case_id=s, images=[f]) for s, f in zip(stems, files)]
    grouped: dict[str, dict[int, Path]] = {}
    for f, m in zip(files, matches):
        if m is None:
            raise InputError(
                f"{f}: name lacks the _XXXX channel suffix used by the other files in {folder}; rename it to "
                f"{split_extension(f)[0]}_0000{split_extension(f)[1]}"
            )
        grouped.setdefault(m["case"], {})[int(m["channel"])] = f
    cases = []
    for case_id, channels in sorted(grouped.items()):
        if num_channels > 1 and set(channels) == {0} and _carries_all_channels(channels[0], num_channels):
            cases.append(Case(case_id=case_id, images=[channels[0]]))
            continue
        for c in range(num_channels):
            if c not in channels:
                ext = split_extension(next(iter(channels.values())))[1]
                raise InputError(
                    f"{folder / f'{case_id}_{c:04d}{ext}'}: missing channel {c} of case {case_id!r} "
                    f"(dataset.json declares {num_channels} channel(s)); add the file, or store all channels "
                    f"in {case_id}_0000{ext} (e.g. one RGB image)"
                )
        extra = sorted(set(channels) - set(range(num_channels)))
        if extra:
            raise InputError(
                f"{channels[extra[0]]}: channel {extra[0]} of case {case_id!r} is not declared in dataset.json "
                f"({num_channels} channel(s)); add it to channel_names or remove the file"
            )
        cases.append(Case(case_id=case_id, images=[channels[c] for c in range(num_channels)]))
    return cases


def _attach_labels(cases: list[Case], folder: Path, ext: str, required: bool) -> None:
    for case in cases:
        label = folder / f"{case.case_id}{ext}"
        if label.is_file():
            case.label = label
        elif required:
            raise InputError(f"{case.images[0]}: no label found (expected {label}); add the label or remove the image")


def _file_ending(meta: dict, files: list[Path], json_path: Path) -> str:
    exts = {split_extension(f)[1] for f in files if not format_of(f).folder} or {".nii.gz"}  # DICOM: NIfTI labels
    file_ending = str(meta.get("file_ending", "")).strip().lower() or sorted(exts)[0]
    if not file_ending.startswith("."):
        file_ending = "." + file_ending
    if file_ending not in IMAGE_EXTENSIONS:
        raise InputError(
            f"{json_path}: file_ending {file_ending!r} is not supported; use one of {', '.join(LABEL_EXTENSIONS)}"
        )
    fmt = format_of(Path(f"x{file_ending}"))
    if not fmt.holds_labels:
        raise InputError(
            f"{json_path}: file_ending {file_ending!r} cannot hold label maps (lossy or image-only); "
            f"use one of {', '.join(LABEL_EXTENSIONS)}"
        )
    for f in files:
        if split_extension(f)[1] != file_ending and not format_of(f).folder:
            raise InputError(
                f"{f}: extension differs from the dataset's file_ending {file_ending!r}; convert it or fix dataset.json"
            )
    return file_ending


def _spatial_dims(first_image: Path) -> int:
    """2 or 3: fixed by the format, or read from the first image where the format holds both."""
    fmt = format_of(first_image)
    if len(fmt.spatial_dims) == 1:
        return fmt.spatial_dims[0]
    return len(read_header(first_image)["spatial_shape"])


def _scan_nnunet(root: Path) -> DatasetInfo:
    json_path = root / "dataset.json"
    if not json_path.is_file():
        raise InputError(
            f"{json_path}: missing; the nnU-Net layout needs a dataset.json with "
            '"channel_names" (e.g. {"0": "CT"}) and "labels" (e.g. {"background": 0, "organ": 1})'
        )
    meta = _read_json(json_path)
    channel_names = _parse_channels(meta, json_path)
    layout = _parse_labels(meta, json_path)
    if channel_names is None or layout is None:
        missing = "channel_names" if channel_names is None else "labels"
        raise InputError(f'{json_path}: no "{missing}" entry; add it (see the nnU-Net dataset.json format)')
    files = _listdir(root / "imagesTr", IMAGE_EXTENSIONS, "imagesTr/")
    if not files:
        raise InputError(f"{root / 'imagesTr'}: folder is empty; put the training images there")
    file_ending = _file_ending(meta, files, json_path)
    cases = _group_cases(files, len(channel_names), root / "imagesTr")
    if not (root / "labelsTr").is_dir():
        raise InputError(f"{root / 'labelsTr'}: folder missing; the nnU-Net layout needs labelsTr/ beside imagesTr/")
    _attach_labels(cases, root / "labelsTr", file_ending, required=True)
    test_cases: list[Case] = []
    if (root / "imagesTs").is_dir():
        test_files = _listdir(root / "imagesTs", IMAGE_EXTENSIONS, "imagesTs/")
        if test_files:
            test_cases = _group_cases(test_files, len(channel_names), root / "imagesTs")
            if (root / "labelsTs").is_dir():
                _attach_labels(test_cases, root / "labelsTs", file_ending, required=False)
    spatial_dims = _spatial_dims(cases[0].images[0])
    return DatasetInfo(
        layout="nnunet",
        spatial_dims=spatial_dims,
        cases=cases,
        test_cases=test_cases,
        channel_names=channel_names,
        modality=infer_modality(channel_names) if spatial_dims == 3 else "2d",
        root=root,
        name=str(meta.get("name", root.resolve().name)),
        file_ending=file_ending,
        use_mask_for_norm=_mask_override(meta, json_path),
        original_labels=original_label_values(meta, json_path),
        **_label_fields(layout),
    )


# ------------------------------------------------------------------------------------------ folders


def _pair_masks(
    images: list[Path], masks: list[Path], mask_dir: Path | None, required: bool, suffix: str = ""
) -> list[Case]:
    """Cases of ``images`` with the mask of the same name (``NAME``, ``NAME_mask``, ``NAME_segmentation``, ...).

    With ``required``, images without a mask and masks without an image are one InputError listing them.
    """
    by_stem = {split_extension(m)[0]: m for m in masks}
    cases, seen, used = [], set(), set()
    for image in images:
        stem = split_extension(image)[0]
        if stem in seen:
            raise InputError(f"{image}: two images share the name {stem!r}; rename one of them")
        seen.add(stem)
        label = next((by_stem[stem + s] for s in _MASK_SUFFIXES if stem + s in by_stem), None)
        if label is not None:
            used.add(label)
        cases.append(Case(case_id=stem, images=[image], label=label))
    if required:
        _check_paired(cases, [m for m in masks if m not in used], mask_dir, suffix)
    return cases


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")


def _check_paired(cases: list[Case], orphans: list[Path], mask_dir: Path | None, suffix: str) -> None:
    """One InputError listing the images without a mask and the masks without an image."""
    lonely = [c.images[0] for c in cases if c.label is None]
    if not lonely and not orphans:
        return
    parts = []
    if lonely:
        parts.append(f"{len(lonely)} image(s) without a mask: {_names(lonely)}")
    if orphans:
        parts.append(f"{len(orphans)} mask(s) without an image: {_names(orphans)}")
    first = lonely[0] if lonely else orphans[0]
    expected = (mask_dir / f"{split_extension(first)[0]}{suffix}.png") if mask_dir is not None else None
    head = f"{first}: no mask found (expected {expected})" if lonely else f"{first}: no image of this name"
    raise InputError(
        f"{head}; unpaired files: {'; '.join(parts)}. Masks pair with images by name (NAME, NAME_mask, "
        "NAME_segmentation, ...); add or remove the files"
    )


def _masks_in(folder: Path | None, layout: Layout2D) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return _listdir(folder, EXTENSIONS_2D, f"{folder.name}/", layout.skip_documents)


def _infer_labels(cases: list[Case]) -> LabelLayout:
    values: set[int] = set()
    for case in cases:
        if case.label is not None:
            label, _ = read_label(case.label)
            if label.min() < 0:
                raise InputError(f"{case.label}: negative label values; store class indices 0, 1, 2, ...")
            values.update(int(v) for v in np.unique(label))
    top = max(max(values, default=1), 1)
    if top > 255:
        raise InputError(
            f"masks hold values up to {top}; store class indices 0..K-1 (or 0/255 for binary masks), not instance ids"
        )
    return LabelLayout(names={k: "background" if k == 0 else f"class{k}" for k in range(top + 1)})


def _mask_rule(lossy: bool, inferred: bool, labels: LabelLayout) -> str | None:
    """How the masks are read, stated once in the training log (None: as stored)."""
    if lossy and labels.num_classes > 2:
        return LOSSY_CLASS_RULE
    return BINARY_MASK_RULE if lossy or (inferred and labels.num_classes == 2) else None


def _scan_folders(root: Path, layout: Layout2D) -> DatasetInfo:
    meta = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    image_dir = root / layout.images
    images = _listdir(image_dir, EXTENSIONS_2D, f"{layout.images}/", layout.skip_documents)
    if not images:
        raise InputError(f"{image_dir}: folder is empty; put the training images there")
    mask_dir = mask_folder(root, layout)
    if mask_dir is None:
        raise InputError(
            f"{root}: found {layout.images}/ but no {layout.masks[0]}/ folder; add {layout.masks[0]}/ with one mask "
            "per image"
        )
    masks = _masks_in(mask_dir, layout)
    cases = _pair_masks(images, masks, mask_dir, required=True, suffix=layout.mask_suffix)
    test_cases: list[Case] = []
    held_out = held_out_folders(root, layout)
    if held_out is not None:
        test_images = _listdir(held_out[0], EXTENSIONS_2D, f"{held_out[0].name}/", layout.skip_documents)
        test_cases = _pair_masks(test_images, _masks_in(held_out[1], layout), held_out[1], required=False)
    channel_names = _parse_channels(meta, root / "dataset.json")
    if channel_names is None:
        channels = read_header(images[0])["num_channels"]
        channel_names = ["R", "G", "B"] if channels == 3 else ["grey"] * channels
    labels = _parse_labels(meta, root / "dataset.json")
    inferred = labels is None
    labels = labels or _infer_labels(cases)
    lossy = any(not format_of(m).lossless for m in masks)
    return DatasetInfo(
        layout=layout.name,
        spatial_dims=2,
        cases=cases,
        test_cases=test_cases,
        channel_names=channel_names,
        modality="2d",
        root=root,
        name=str(meta.get("name", root.resolve().name)),
        file_ending=split_extension(images[0])[1],
        use_mask_for_norm=_mask_override(meta, root / "dataset.json"),
        mask_rule=_mask_rule(lossy, inferred, labels),
        **_label_fields(labels),
    )


def scan_dataset(root: str | Path) -> DatasetInfo:
    """Find the layout, cases and description of the dataset in ``root`` (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found; pass the folder holding imagesTr/ or images/")
    if (root / "imagesTr").is_dir():
        return _scan_nnunet(root)
    layout = find_layout(root)
    if layout is not None:
        return _scan_folders(root, layout)
    raise InputError(
        f"{root}: no imagesTr/ (nnU-Net layout), images/ + masks/ (2D folders, Kvasir-SEG), ISIC 2018 or "
        "CVC-ClinicDB folders found; see docs/data.md for layouts"
    )
