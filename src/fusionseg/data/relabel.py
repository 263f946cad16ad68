"""``fusionseg relabel``: renumber the label values of a dataset to 0..K-1, and back for predictions.

nnU-Net (and fusionseg) need the label values of dataset.json to be consecutive from 0 (background);
atlases often are not (AAL: 2001, 2002, ...; a macaque atlas: 725 values up to 2000+).
:func:`relabel_dataset` maps the values of dataset.json, in increasing order, to 0..K-1 (the ignore
label, if any, to K), rewrites every label file of ``labelsTr/`` and ``labelsTs/`` and stores the
mapping in dataset.json as ``"original_labels": {"new value": original value}``. It writes a new
dataset folder (images copied, the folder appears only when complete), or with ``in_place`` rewrites
the label folders and dataset.json of the dataset itself (each folder replaced as a whole).

A model trained on the relabelled dataset keeps the mapping in its preprocessing
(``pre.original_labels``: the original value of each class), and ``fusionseg predict`` writes its
label maps in the original values (:func:`restore_original_labels`).

Example:
    >>> relabel_dataset("Dataset777_Atlas", "Dataset778_AtlasRelabelled")
    PosixPath('Dataset778_AtlasRelabelled')
    >>> json.loads(Path("Dataset778_AtlasRelabelled/dataset.json").read_text())["original_labels"]
    {'0': 0, '1': 2001, '2': 2002, ...}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fusionseg.errors import InputError

__all__ = [
    "LABEL_FOLDERS",
    "ORIGINAL_LABELS_KEY",
    "format_values",
    "original_label_values",
    "relabel_dataset",
    "relabel_mapping",
    "restore_original_label_file",
    "restore_original_labels",
]

ORIGINAL_LABELS_KEY = "original_labels"
LABEL_FOLDERS = ("labelsTr", "labelsTs")


def format_values(values: Sequence[int], shown: int = 6) -> str:
    """``[0, 1, 2, 5, 9, 14, ...] (725 values)``: the first few of many values and their count."""
    values = list(values)
    head = ", ".join(str(v) for v in values[:shown])
    return f"[{head}{', ...' if len(values) > shown else ''}] ({len(values)} values)"


def _entries(labels: Mapping) -> list[tuple[str, object]]:
    """(name, value or list of values) of a dataset.json "labels" object (nnU-Net v2 or MSD form)."""
    if all(str(k).isdigit() for k in labels):  # MSD: {"0": "background", "1": "liver"}
        return [(str(v), int(k)) for k, v in labels.items()]
    return [(str(name), value) for name, value in labels.items()]


def relabel_mapping(labels: Mapping, source: str | Path = "dataset.json") -> dict[int, int]:
    """{original value: new value} of a dataset.json "labels" object: its values in increasing order →
    0..K-1, the ignore label → K. InputError (one line) for values that are not non-negative integers."""
    values: set[int] = set()
    ignore = None
    for name, value in _entries(labels):
        given = value if isinstance(value, list | tuple) else [value]
        items = [v for v in given if isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0]
        if not given or len(items) != len(given):
            raise InputError(f"{source}: label {name!r} = {value!r}; use a non-negative integer or a list of them")
        if name == "ignore":
            ignore = int(items[0])
        else:
            values.update(int(v) for v in items)
    if 0 not in values:
        raise InputError(f'{source}: no background label 0; add "background": 0 to "labels"')
    mapping = {old: new for new, old in enumerate(sorted(values))}
    if ignore is not None:
        mapping[ignore] = len(values)
    return mapping


def _relabelled_json(meta: dict, mapping: dict[int, int]) -> dict:
    """dataset.json ``meta`` with its label values mapped and the mapping stored (new → original)."""

    def new(value):
        return [mapping[int(v)] for v in value] if isinstance(value, list | tuple) else mapping[int(value)]

    labels = meta["labels"]
    out = dict(meta)
    if all(str(k).isdigit() for k in labels):
        out["labels"] = {str(mapping[int(k)]): v for k, v in labels.items()}
    else:
        out["labels"] = {name: new(value) for name, value in labels.items()}
    if isinstance(meta.get("regions_class_order"), list):
        out["regions_class_order"] = [mapping.get(int(v), int(v)) for v in meta["regions_class_order"]]
    earlier = original_label_values(meta, "dataset.json") or []
    out[ORIGINAL_LABELS_KEY] = {
        str(n): (earlier[o] if o < len(earlier) else o) for o, n in sorted(mapping.items(), key=lambda kv: kv[1])
    }
    return out


def original_label_values(meta: Mapping, source: str | Path = "dataset.json") -> list[int] | None:
    """The original value of each label value 0..K (``"original_labels"`` of dataset.json), or None."""
    raw = meta.get(ORIGINAL_LABELS_KEY)
    if raw is None:
        return None
    try:
        pairs = sorted((int(k), int(v)) for k, v in raw.items())
    except (AttributeError, TypeError, ValueError):
        raise InputError(f'{source}: "{ORIGINAL_LABELS_KEY}" must map label values to original values') from None
    if [k for k, _ in pairs] != list(range(len(pairs))):
        raise InputError(f'{source}: "{ORIGINAL_LABELS_KEY}" must cover the label values 0..K-1 without gaps')
    return [v for _, v in pairs]


def restore_original_labels(label: np.ndarray, original: Sequence[int]) -> np.ndarray:
    """A label map of values 0..K-1 → the original values (``original[v]``), in a dtype that holds them."""
    from fusionseg.data.io import label_dtype

    lut = np.asarray(original, dtype=np.int64)
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= len(lut)):
        raise ValueError(f"label values {int(label.min())}..{int(label.max())} outside 0..{len(lut) - 1}")
    return lut[label].astype(label_dtype(int(lut.max(initial=0))))


def restore_original_label_file(path: str | os.PathLike, original: Sequence[int]) -> Path:
    """Rewrite the label file ``path`` (values 0..K-1) in the original values, keeping its format and geometry."""
    from fusionseg.data.io import read_label, write_label

    path = Path(path)
    label, meta = read_label(path)
    return write_label(restore_original_labels(label, original), meta, path)


def _relabel_file(source: Path, target: Path, lut: np.ndarray) -> None:
    """Write ``source`` with its values mapped through ``lut`` to ``target`` (same format and geometry)."""
    from fusionseg.data.io import label_dtype, read_label, write_label
    from fusionseg.files import atomic_write

    label, meta = read_label(source)
    label = np.asarray(label, dtype=np.int64)
    unknown = np.setdiff1d(np.unique(label), np.flatnonzero(lut >= 0))
    if unknown.size:
        raise InputError(
            f"{source}: label values {format_values(unknown.tolist())} are not in dataset.json; "
            "add them to its labels, then relabel"
        )
    mapped = lut[label]
    with atomic_write(target) as tmp:  # the temporary name keeps the extension: the same format
        write_label(mapped.astype(label_dtype(int(mapped.max(initial=0)))), meta, tmp)


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(max(mapping) + 1, -1, dtype=np.int64)
    for old, new in mapping.items():
        lut[old] = new
    return lut


def _relabel_folder(source: Path, target: Path, lut: np.ndarray, log: Callable[..., None]) -> int:
    """Every label file of ``source`` relabelled into ``target`` (other files copied) → number of label files."""
    from fusionseg.data.formats import LABEL_EXTENSIONS

    count = 0
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(LABEL_EXTENSIONS):
            _relabel_file(path, target / path.name, lut)
            count += 1
        elif path.is_file():
            shutil.copy2(path, target / path.name)
    log(f"relabel: {count} label files of {source.name}/")
    return count


def _copy_tree(source: Path, target: Path, skip: set[str]) -> None:
    """Copy the dataset folder ``source`` into ``target`` (new), leaving out the entries named in ``skip``."""
    for path in sorted(source.iterdir()):
        if path.name in skip:
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name)
        else:
            shutil.copy2(path, target / path.name)


def relabel_dataset(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    in_place: bool = False,
    log: Callable[..., None] = print,
) -> Path:
    """Renumber the labels of the nnU-Net dataset ``source`` to 0..K-1 (see the module docstring) → the
    relabelled dataset's folder: ``output`` (must not exist, or be empty), or ``source`` with ``in_place``."""
    from fusionseg.data.json_input import read_json_file
    from fusionseg.files import atomic_directory, folder_lock, write_text_atomic

    source = Path(source)
    json_path = source / "dataset.json"
    if not json_path.is_file():
        raise InputError(f"{json_path}: missing; relabel works on nnU-Net datasets (dataset.json, labelsTr/)")
    meta = read_json_file(json_path, "fix the JSON syntax")
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict) or not meta["labels"]:
        raise InputError(f'{json_path}: no "labels" object; add one, e.g. {{"background": 0, "tumour": 1}}')
    if (output is None) == (not in_place):
        raise InputError("relabel: pass --output NEW_FOLDER, or --in-place to rewrite the dataset itself")
    mapping = relabel_mapping(meta["labels"], json_path)
    if all(old == new for old, new in mapping.items()):
        raise InputError(f"{json_path}: label values are already 0..{len(mapping) - 1}; nothing to relabel")
    lut, new_meta = _lut(mapping), _relabelled_json(meta, mapping)
    folders = [name for name in LABEL_FOLDERS if (source / name).is_dir()]
    shown = format_values(sorted(mapping))
    if in_place:
        with folder_lock(source, "relabel"):
            for name in folders:
                with atomic_directory(source / name) as tmp:
                    _relabel_folder(source / name, tmp, lut, log)
            write_text_atomic(json_path, json.dumps(new_meta, indent=2) + "\n")
        log(f"relabel: {shown} → 0..{len(mapping) - 1} in {source} (mapping in dataset.json)")
        return source
    assert output is not None  # refused above: without in_place, output is required
    target = Path(output)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"--output {target} exists and is not empty; pass a new folder (nothing is overwritten)")
    if target.resolve() == source.resolve():
        raise InputError("--output is the dataset itself; pass a new folder, or --in-place")
    with atomic_directory(target) as tmp:
        _copy_tree(source, tmp, {"dataset.json", ".fusionseg-lock", *folders})
        for name in folders:
            _relabel_folder(source / name, tmp / name, lut, log)
        write_text_atomic(tmp / "dataset.json", json.dumps(new_meta, indent=2) + "\n")
    log(f"relabel: {shown} → 0..{len(mapping) - 1} in {target} (mapping in dataset.json)")
    return target
