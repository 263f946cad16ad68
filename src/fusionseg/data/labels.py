"""Label layouts of nnU-Net v2's dataset.json: plain classes, regions, the ignore label.

``"labels"`` maps names to label values. A value may be a list: then the entry is a **region**, the
union of those values (BraTS: ``"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3``).
As soon as one entry lists more than one value the dataset is region-based (as in nnU-Net):
every foreground entry (not background, not ignore) becomes one sigmoid output channel, in the
order of dataset.json, and ``"regions_class_order"`` says which label value each region paints
when predictions are turned back into a label map — later regions overwrite earlier ones.
``"ignore": K`` marks voxels without annotation; K must be the highest value (max label + 1).
It is allowed in label maps, excluded from the class count, from losses and from metrics.

Training and prediction use one :class:`LabelLayout` (``pre.label_layout`` of the preprocessing):

- ``out_channels``, ``activation`` ("softmax" | "sigmoid"): the network head;
- ``targets(label)``: training targets and the valid-voxel mask;
- ``to_label_map(probabilities)``: argmax, or regions painted in ``regions_class_order``.

Example:
    >>> layout = LabelLayout.from_dataset_json(
    ...     {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3, "ignore": 4},
    ...     regions_class_order=[1, 2, 3])
    >>> layout.num_classes, layout.out_channels, layout.activation, layout.ignore_label
    (4, 3, 'sigmoid', 4)
    >>> regions = labels_to_regions(label, layout.regions)           # (3, *S) uint8 (or bool tensor)
    >>> label_back = regions_to_labels(regions, layout.regions_class_order)   # (*S), == label off ignore
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch

from fusionseg.data.relabel import format_values
from fusionseg.errors import InputError

__all__ = ["LabelLayout", "labels_to_regions", "regions_to_labels", "valid_mask"]

Array = np.ndarray | torch.Tensor


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@overload
def labels_to_regions(label: torch.Tensor, regions: Sequence[Sequence[int]], dim: int = 0) -> torch.Tensor: ...
@overload
def labels_to_regions(label: np.ndarray, regions: Sequence[Sequence[int]], dim: int = 0) -> np.ndarray: ...
def labels_to_regions(label: Array, regions: Sequence[Sequence[int]], dim: int = 0) -> Array:
    """Label map → one binary mask per region, stacked on ``dim``.

    ``label`` (*S) → (R, *S) with ``dim=0``; a batch (B, *S) with ``dim=1`` → (B, R, *S). Region r is
    ``isin(label, regions[r])``. NumPy in → uint8; torch in → bool on the same device.
    """
    if isinstance(label, torch.Tensor):
        masks = [torch.isin(label, torch.as_tensor(list(r), dtype=label.dtype, device=label.device)) for r in regions]
        return torch.stack(masks, dim=dim)
    label = np.asarray(label)
    return np.stack([np.isin(label, list(r)) for r in regions], axis=dim).astype(np.uint8)


@overload
def regions_to_labels(
    regions: torch.Tensor, regions_class_order: Sequence[int], threshold: float = 0.5, dim: int = 0
) -> torch.Tensor: ...
@overload
def regions_to_labels(
    regions: np.ndarray, regions_class_order: Sequence[int], threshold: float = 0.5, dim: int = 0
) -> np.ndarray: ...
def regions_to_labels(
    regions: Array, regions_class_order: Sequence[int], threshold: float = 0.5, dim: int = 0
) -> Array:
    """Region masks or sigmoid probabilities (R, *S) → label map (*S), exactly as nnU-Net does.

    Start from background 0; for region i in order, voxels with ``regions[i] > threshold`` get
    label ``regions_class_order[i]`` (later regions overwrite earlier ones). Output uint8 (uint16 /
    int32 for torch when a label exceeds 255); torch in → torch out on the same device.
    """
    order = [int(c) for c in regions_class_order]
    if regions.shape[dim] != len(order):
        raise ValueError(f"{regions.shape[dim]} region channels but regions_class_order has {len(order)} entries")
    big = max(order, default=0) > 255
    if isinstance(regions, torch.Tensor):
        scores = regions.float() if regions.dtype == torch.bool else regions
        out = torch.zeros(
            scores.shape[:dim] + scores.shape[dim + 1 :],
            dtype=torch.int32 if big else torch.uint8,
            device=scores.device,
        )
        for i, c in enumerate(order):
            out[scores.select(dim, i) > threshold] = c
        return out
    array = np.asarray(regions)
    array = array.astype(np.float32) if array.dtype.kind == "b" else array
    label_map = np.zeros(np.delete(array.shape, dim), dtype=np.uint16 if big else np.uint8)
    for i, c in enumerate(order):
        label_map[np.take(array, i, axis=dim) > threshold] = c
    return label_map


def valid_mask(label: Array, ignore_label: int | None) -> Array | None:
    """Voxels that carry an annotation: ``label != ignore_label`` (same shape); None without an ignore label."""
    if ignore_label is None:
        return None
    return label != ignore_label


@dataclass(frozen=True)
class LabelLayout:
    """How label maps relate to network outputs.

    Attributes:
        names: label value → name, background 0 included, ignore excluded; values are 0..K-1.
        regions: foreground regions (tuples of label values) in dataset.json order, or None.
        region_names: the names of ``regions``.
        regions_class_order: label value painted by each region (same length as ``regions``).
        ignore_label: the value of unannotated voxels (= K), or None.
    """

    names: Mapping[int, str]
    regions: tuple[tuple[int, ...], ...] | None = None
    region_names: tuple[str, ...] | None = None
    regions_class_order: tuple[int, ...] | None = None
    ignore_label: int | None = None

    # ------------------------------------------------------------------------------------ properties

    @property
    def num_classes(self) -> int:
        """Label values of the maps (background included, ignore excluded)."""
        return len(self.names)

    @property
    def has_regions(self) -> bool:
        return self.regions is not None

    @property
    def out_channels(self) -> int:
        """Network output channels: one per region (sigmoid), else one per class (softmax)."""
        return len(self.regions) if self.regions is not None else self.num_classes

    @property
    def activation(self) -> str:
        """``"sigmoid"`` for regions (independent, overlapping outputs), else ``"softmax"``."""
        return "sigmoid" if self.has_regions else "softmax"

    @property
    def output_names(self) -> list[str]:
        """Name of each output channel (regions, or classes incl. background)."""
        if self.region_names is not None:
            return list(self.region_names)
        return [self.names[k] for k in range(self.num_classes)]

    @property
    def allowed_values(self) -> list[int]:
        """Values a label map may hold: 0..K-1 plus the ignore label."""
        extra = [self.ignore_label] if self.ignore_label is not None else []
        return list(range(self.num_classes)) + extra

    # ----------------------------------------------------------------------------------- conversion

    @overload
    def valid_mask(self, label: torch.Tensor) -> torch.Tensor | None: ...
    @overload
    def valid_mask(self, label: np.ndarray) -> np.ndarray | None: ...
    def valid_mask(self, label: Array) -> Array | None:
        """``label != ignore_label`` (same shape), or None when the dataset has no ignore label."""
        return valid_mask(label, self.ignore_label)

    def targets(self, label: Array, dim: int = 0) -> tuple[Array, Array | None]:
        """Training targets of a label map and its valid-voxel mask.

        Softmax: ``label`` with ignore voxels set to 0 (class indices, same shape). Regions: binary
        masks stacked on ``dim`` (``label`` (*S) → (R, *S); a batch (B, *S) with ``dim=1`` →
        (B, R, *S)), float32 for tensors. The mask (same shape as ``label``) is True where the
        voxel is annotated, None without an ignore label; losses and metrics average over it.
        """
        valid = self.valid_mask(label)
        if self.regions is None:
            if valid is None:
                return label, None
            return (label * valid if isinstance(label, torch.Tensor) else np.where(valid, label, 0)), valid
        regions = labels_to_regions(label, self.regions, dim=dim)
        if isinstance(regions, torch.Tensor):
            regions = regions.float()
        return regions, valid

    def to_label_map(self, probabilities: Array, dim: int = 0) -> Array:
        """Probabilities (C, *S) (or a batch with ``dim=1``) → label map: argmax over classes (softmax),
        or regions thresholded at 0.5 and painted in ``regions_class_order`` (sigmoid)."""
        if self.regions_class_order is not None:
            return regions_to_labels(probabilities, self.regions_class_order, dim=dim)
        if isinstance(probabilities, torch.Tensor):
            return probabilities.argmax(dim)
        return np.asarray(probabilities).argmax(dim)

    # ----------------------------------------------------------------------------------- (de)serialise

    def to_preprocessing(self) -> dict:
        """The label entries of the stored preprocessing dict (``Preprocessing.to_dict``)."""
        return {
            "labels": {str(k): v for k, v in self.names.items()},
            "num_classes": self.num_classes,
            "out_channels": self.out_channels,
            "activation": self.activation,
            "regions": [list(r) for r in self.regions] if self.regions is not None else None,
            "region_names": list(self.region_names) if self.region_names is not None else None,
            "regions_class_order": list(self.regions_class_order) if self.regions_class_order is not None else None,
            "ignore_label": self.ignore_label,
        }

    @classmethod
    def from_preprocessing(cls, stored: Mapping) -> LabelLayout:
        """The layout recorded by :meth:`to_preprocessing` in a stored preprocessing dict (older dicts: plain
        classes, no ignore label); :meth:`~fusionseg.data.preprocessing.Preprocessing.from_dict` checks the entries."""
        names = {int(k): str(v) for k, v in stored.get("labels", {}).items()}
        if not names:
            names = {k: "background" if k == 0 else f"class{k}" for k in range(int(stored["num_classes"]))}
        regions = stored.get("regions")
        return cls(
            names=dict(sorted(names.items())),
            regions=tuple(tuple(int(v) for v in r) for r in regions) if regions else None,
            region_names=tuple(stored["region_names"]) if regions and stored.get("region_names") else None,
            regions_class_order=tuple(int(c) for c in stored["regions_class_order"]) if regions else None,
            ignore_label=None if stored.get("ignore_label") is None else int(stored["ignore_label"]),
        )

    @classmethod
    def from_dataset_json(
        cls,
        labels: object,
        regions_class_order: object = None,
        source: str | Path = "dataset.json",
    ) -> LabelLayout:
        """Parse ``"labels"`` (nnU-Net v2 ``{name: value | [values]}`` or MSD ``{"0": name}``) and
        ``"regions_class_order"``; InputError naming ``source`` and the fix for anything invalid."""
        if not isinstance(labels, Mapping) or not labels:
            raise InputError(f'{source}: "labels" must be a non-empty object, e.g. {{"background": 0, "tumour": 1}}')
        if all(str(k).isdigit() for k in labels):  # MSD: {"0": "background", "1": "liver"}
            entries = [(str(v), int(k)) for k, v in labels.items()]
        else:
            entries = [(str(name), value) for name, value in labels.items()]
        ignore = None
        parsed: list[tuple[str, tuple[int, ...]]] = []
        for name, value in entries:
            given = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if not given or not all(_is_int(v) and int(v) >= 0 for v in given):
                raise InputError(
                    f"{source}: label {name!r} = {value!r}; use a non-negative integer or a list of them (a region)"
                )
            values = tuple(int(v) for v in given)
            if name == "ignore":
                if len(values) != 1:
                    raise InputError(f'{source}: "ignore" = {value!r} must be one integer, not a region')
                ignore = values[0]
            else:
                parsed.append((name, values))
        has_regions = any(len(set(v)) > 1 for _, v in parsed)
        all_values = sorted({v for _, vals in parsed for v in vals})
        if all_values != list(range(len(all_values))):
            raise InputError(
                f"{source}: label values must be consecutive from 0 (background), got {format_values(all_values)}; "
                "renumber them with `fusionseg relabel --data DATASET --output NEW_DATASET`"
            )
        if len(all_values) < 2:
            raise InputError(f"{source}: needs at least one foreground label besides background 0")
        if ignore is not None and ignore != all_values[-1] + 1:
            raise InputError(
                f'{source}: "ignore" = {ignore} must be the highest label value ({all_values[-1] + 1}); renumber it'
            )
        if not has_regions:
            return cls._plain(parsed, ignore, source)
        return cls._regional(parsed, all_values, ignore, regions_class_order, source)

    @classmethod
    def _plain(cls, parsed: list, ignore: int | None, source: str | Path) -> LabelLayout:
        # Without regions nnU-Net ignores "regions_class_order"; so do we.
        names: dict[int, str] = {}
        for name, (value, *_) in parsed:
            if value in names:
                raise InputError(f"{source}: labels {names[value]!r} and {name!r} share the value {value}; rename one")
            names[value] = name
        return cls(names=dict(sorted(names.items())), ignore_label=ignore)

    @classmethod
    def _regional(
        cls, parsed: list, all_values: list[int], ignore: int | None, order: object, source: str | Path
    ) -> LabelLayout:
        foreground = [(n, v) for n, v in parsed if set(v) != {0}]
        if not isinstance(order, (list, tuple)) or not all(_is_int(c) for c in order):
            raise InputError(
                f'{source}: region labels need "regions_class_order" (one label value per region, e.g. '
                f"{list(range(1, len(foreground) + 1))}); add it to dataset.json"
            )
        if len(order) != len(foreground):
            raise InputError(
                f'{source}: "regions_class_order" has {len(order)} entries but there are {len(foreground)} regions '
                f"({', '.join(n for n, _ in foreground)}); give one label value per region"
            )
        bad = [int(c) for c in order if int(c) not in all_values]
        if bad:
            raise InputError(f'{source}: "regions_class_order" values {bad} are not label values {all_values}')
        names = {v: f"label{v}" for v in all_values}
        names.update({vals[0]: name for name, vals in parsed if len(set(vals)) == 1})
        names[0] = next((n for n, v in parsed if set(v) == {0}), "background")
        return cls(
            names=dict(sorted(names.items())),
            regions=tuple(tuple(sorted(set(v))) for _, v in foreground),
            region_names=tuple(n for n, _ in foreground),
            regions_class_order=tuple(int(c) for c in order),
            ignore_label=ignore,
        )
