"""Dataset discovery: the nnU-Net/MSD layout (3D) and image/mask folders (2D).

``scan_dataset(root)`` finds the cases and the dataset description without loading voxels
(2D folders without a ``dataset.json`` read their masks once to find the label values).

Layouts:
    nnU-Net v2 / MSD::

        root/dataset.json            channel_names (or MSD "modality"), labels, file_ending
        root/imagesTr/CASE_0000.nii.gz, CASE_0001.nii.gz, ...   (one file per channel)
        root/labelsTr/CASE.nii.gz
        root/imagesTs/ (optional), root/labelsTs/ (optional)

    MSD-style files without ``_0000`` suffixes hold all channels in one (4D) file.

    2D folders::

        root/images/NAME.png|jpg|tif   (grey or RGB)
        root/masks/NAME.png|tif        (also labels/; NAME, NAME_mask, NAME_label or NAME_segmentation)
        root/test/images/, root/test/masks/ (optional)
        root/dataset.json (optional: channel_names and labels)

Example:
    >>> info = scan_dataset("data/Task02_Heart")
    >>> info.layout, info.spatial_dims, info.num_classes, len(info.cases)
    ('nnunet', 3, 2, 20)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionseg.data.io import EXTENSIONS_2D, SUPPORTED_EXTENSIONS, file_format, read_header, read_label, split_extension
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
    """What :func:`scan_dataset` found. ``labels`` maps class index → name (0 = background)."""

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

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)


def infer_modality(channel_names: list[str]) -> str:
    """``"CT"`` if any channel is CT, ``"MRI"`` if any is an MR contrast, else ``"other"``."""
    names = [str(n).strip().lower() for n in channel_names]
    if any(n == "ct" or n.startswith("ct") for n in names):
        return "CT"
    if any(n in _MRI_NAMES or n.startswith("mr") for n in names):
        return "MRI"
    return "other"


def _listdir(folder: Path, allowed: tuple[str, ...], what: str) -> list[Path]:
    """Visible files of ``folder`` (sorted); InputError for an unsupported extension."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        ext = split_extension(path)[1]
        if ext not in allowed:
            raise InputError(
                f"{path}: unsupported file extension {ext or '(none)'!r} in {what}; "
                f"use one of {', '.join(allowed)} or move the file out of the folder"
            )
        files.append(path)
    return files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot parse ({' '.join(str(exc).split())}); fix the JSON syntax") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with channel_names and labels")
    return data


def _parse_channels(meta: dict, path: Path) -> list[str] | None:
    raw = meta.get("channel_names", meta.get("modality"))
    if raw is None:
        return None
    if isinstance(raw, list):
        return [str(n) for n in raw]
    if not isinstance(raw, dict) or not all(str(k).isdigit() for k in raw):
        raise InputError(f'{path}: "channel_names" must map channel indices to names, e.g. {{"0": "CT"}}')
    keys = sorted(int(k) for k in raw)
    if keys != list(range(len(keys))):
        raise InputError(f"{path}: channel indices {keys} must be 0..{len(keys) - 1} without gaps")
    return [str(raw[str(k)] if str(k) in raw else raw[k]) for k in keys]


def _parse_labels(meta: dict, path: Path) -> dict[int, str] | None:
    raw = meta.get("labels")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise InputError(f'{path}: "labels" must be a non-empty object, e.g. {{"background": 0, "tumour": 1}}')
    if all(str(k).isdigit() for k in raw):  # MSD: {"0": "background", "1": "liver"}
        labels = {int(k): str(v) for k, v in raw.items()}
    else:  # nnU-Net v2: {"background": 0, "liver": 1}
        labels = {}
        for name, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(
                    f"{path}: label {name!r} = {value!r}; only integer class labels are supported "
                    "(region-based label lists are not)"
                )
            labels[int(value)] = str(name)
    ids = sorted(labels)
    if ids != list(range(len(ids))):
        raise InputError(f"{path}: label values {ids} must be consecutive from 0 (background); renumber the labels")
    if len(ids) < 2:
        raise InputError(f"{path}: needs at least one foreground label besides background 0")
    return dict(sorted(labels.items()))


# ------------------------------------------------------------------------------------------ nnU-Net


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
        for c in range(num_channels):
            if c not in channels:
                ext = split_extension(next(iter(channels.values())))[1]
                raise InputError(
                    f"{folder / f'{case_id}_{c:04d}{ext}'}: missing channel {c} of case {case_id!r} "
                    f"(dataset.json declares {num_channels} channel(s))"
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


def _scan_nnunet(root: Path) -> DatasetInfo:
    json_path = root / "dataset.json"
    if not json_path.is_file():
        raise InputError(
            f"{json_path}: missing; the nnU-Net layout needs a dataset.json with "
            '"channel_names" (e.g. {"0": "CT"}) and "labels" (e.g. {"background": 0, "organ": 1})'
        )
    meta = _read_json(json_path)
    channel_names = _parse_channels(meta, json_path)
    labels = _parse_labels(meta, json_path)
    if channel_names is None or labels is None:
        missing = "channel_names" if channel_names is None else "labels"
        raise InputError(f'{json_path}: no "{missing}" entry; add it (see the nnU-Net dataset.json format)')
    files = _listdir(root / "imagesTr", SUPPORTED_EXTENSIONS, "imagesTr/")
    if not files:
        raise InputError(f"{root / 'imagesTr'}: folder is empty; put the training images there")
    exts = {split_extension(f)[1] for f in files}
    file_ending = str(meta.get("file_ending", "")).lower() or sorted(exts)[0]
    for f in files:
        if split_extension(f)[1] != file_ending:
            raise InputError(
                f"{f}: extension differs from the dataset's file_ending {file_ending!r}; convert it or fix dataset.json"
            )
    cases = _group_cases(files, len(channel_names), root / "imagesTr")
    if not (root / "labelsTr").is_dir():
        raise InputError(f"{root / 'labelsTr'}: folder missing; the nnU-Net layout needs labelsTr/ beside imagesTr/")
    _attach_labels(cases, root / "labelsTr", file_ending, required=True)
    test_cases: list[Case] = []
    if (root / "imagesTs").is_dir():
        test_files = _listdir(root / "imagesTs", SUPPORTED_EXTENSIONS, "imagesTs/")
        if test_files:
            test_cases = _group_cases(test_files, len(channel_names), root / "imagesTs")
            if (root / "labelsTs").is_dir():
                _attach_labels(test_cases, root / "labelsTs", file_ending, required=False)
    spatial_dims = 2 if file_ending in EXTENSIONS_2D else 3
    return DatasetInfo(
        layout="nnunet",
        spatial_dims=spatial_dims,
        cases=cases,
        test_cases=test_cases,
        channel_names=channel_names,
        labels=labels,
        num_classes=len(labels),
        modality=infer_modality(channel_names) if spatial_dims == 3 else "2d",
        root=root,
        name=str(meta.get("name", root.name)),
        file_ending=file_ending,
    )


# ------------------------------------------------------------------------------------------ folders


def _pair_masks(images: list[Path], mask_dir: Path | None, required: bool) -> list[Case]:
    masks: dict[str, Path] = {}
    if mask_dir is not None and mask_dir.is_dir():
        for m in _listdir(mask_dir, EXTENSIONS_2D, f"{mask_dir.name}/"):
            if file_format(m) == "jpeg":
                raise InputError(f"{m}: JPEG masks are lossy and corrupt label values; save masks as PNG or TIFF")
            masks[split_extension(m)[0]] = m
    cases, seen = [], set()
    for image in images:
        stem = split_extension(image)[0]
        if stem in seen:
            raise InputError(f"{image}: two images share the name {stem!r}; rename one of them")
        seen.add(stem)
        label = next((masks[stem + s] for s in _MASK_SUFFIXES if stem + s in masks), None)
        if label is None and required:
            expected = mask_dir / f"{stem}.png" if mask_dir is not None else f"masks/{stem}.png"
            raise InputError(f"{image}: no mask found (expected {expected}); add the mask or remove the image")
        cases.append(Case(case_id=stem, images=[image], label=label))
    return cases


def _mask_dir(folder: Path) -> Path | None:
    return next((folder / n for n in ("masks", "labels") if (folder / n).is_dir()), None)


def _infer_labels(cases: list[Case]) -> dict[int, str]:
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
    return {k: "background" if k == 0 else f"class{k}" for k in range(top + 1)}


def _scan_folders(root: Path) -> DatasetInfo:
    meta = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    images = _listdir(root / "images", EXTENSIONS_2D, "images/")
    if not images:
        raise InputError(f"{root / 'images'}: folder is empty; put the training images there")
    mask_dir = _mask_dir(root)
    if mask_dir is None:
        raise InputError(f"{root}: found images/ but no masks/ folder; add masks/ with one mask per image")
    cases = _pair_masks(images, mask_dir, required=True)
    test_cases: list[Case] = []
    if (root / "test" / "images").is_dir():
        test_cases = _pair_masks(
            _listdir(root / "test" / "images", EXTENSIONS_2D, "test/images/"), _mask_dir(root / "test"), required=False
        )
    channel_names = _parse_channels(meta, root / "dataset.json")
    if channel_names is None:
        channels = read_header(images[0])["num_channels"]
        channel_names = ["R", "G", "B"] if channels == 3 else ["grey"] * channels
    labels = _parse_labels(meta, root / "dataset.json") or _infer_labels(cases)
    return DatasetInfo(
        layout="folders",
        spatial_dims=2,
        cases=cases,
        test_cases=test_cases,
        channel_names=channel_names,
        labels=labels,
        num_classes=len(labels),
        modality="2d",
        root=root,
        name=str(meta.get("name", root.name)),
        file_ending=split_extension(images[0])[1],
    )


def scan_dataset(root: str | Path) -> DatasetInfo:
    """Find the layout, cases and description of the dataset in ``root`` (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found; pass the folder holding imagesTr/ or images/")
    if (root / "imagesTr").is_dir():
        return _scan_nnunet(root)
    if (root / "images").is_dir():
        return _scan_folders(root)
    raise InputError(
        f"{root}: no imagesTr/ (nnU-Net layout) or images/ + masks/ (2D folders) found; see docs/data.md for layouts"
    )
