"""Training patches streamed from preprocessed, memory-mapped cases (:mod:`fusionseg.data.preprocess`).

:class:`RandPatchd` maps ``{"case_id": str}`` to ``num_samples`` patch dicts ``{"image": (C, *P)
float32, "label": (1, *P) float32, "case_id"}`` cut from the case's memory-mapped ``.npy`` files:
with probability ``foreground_fraction`` centred on a sampled voxel of a random foreground label
value, else anywhere (:func:`patch_dataset` takes the plan's ``pre.foreground_fraction``, the rule
of :func:`fusionseg.data.preprocessing.foreground_fraction`); zero-padded where the case is smaller than the
patch. Only the patch is read from disk, so memory does not depend on the number or size of the cases.
:func:`patch_dataset` adds the augmentation of :mod:`fusionseg.data.transforms`; a MONAI
``DataLoader`` seeds it per worker. :class:`CachedCases` reads whole cases one at a time (validation).

Example:
    >>> ds = patch_dataset(report.folder, ["case_000", "case_001"], pre)
    >>> ds[0][0]["image"].shape   # num_samples patches per case
    torch.Size([1, 128, 128, 96])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, MapTransform, Randomizable

from fusionseg.data.preprocess import load_case
from fusionseg.data.preprocessing import Preprocessing
from fusionseg.errors import InputError

__all__ = ["CachedCases", "RandPatchd", "cut_patch", "patch_dataset"]


def cut_patch(array: np.ndarray, lower: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """``array[..., lower:lower + patch]`` over the last ``len(patch)`` axes, zero where outside the array."""
    spatial = array.shape[-len(patch) :]
    out = np.zeros((*array.shape[: -len(patch)], *patch), dtype=array.dtype)
    src, dst = [], []
    for lo, p, s in zip(lower, patch, spatial):
        a, b = max(lo, 0), min(lo + p, s)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    lead = (slice(None),) * (array.ndim - len(patch))
    inside, source = (*lead, *dst), (*lead, *src)
    out[inside] = array[source]
    return out


class RandPatchd(Randomizable, MapTransform):
    """Cut ``num_samples`` random patches of case ``d["case_id"]`` from the preprocessed ``folder``, each
    centred on a foreground voxel with probability ``foreground_fraction`` (when the case has one)."""

    def __init__(self, folder: str | Path, patch_size: Sequence[int], num_samples: int = 1, *,
                 foreground_fraction: float) -> None:  # fmt: skip
        MapTransform.__init__(self, keys=("case_id",))
        self.folder = Path(folder)
        self.patch = [int(p) for p in patch_size]
        self.num_samples = int(num_samples)
        self.foreground_fraction = float(foreground_fraction)

    def randomize(self, data=None) -> None:  # draws happen in _lower
        pass

    def _lower(self, shape: Sequence[int], locations: dict[int, np.ndarray]) -> list[int]:
        low = [min(0, s - p) for s, p in zip(shape, self.patch)]
        high = [max(0, s - p) for s, p in zip(shape, self.patch)]
        if locations and self.R.rand() < self.foreground_fraction:
            keys = sorted(locations)
            coords = locations[keys[self.R.randint(len(keys))]]
            centre = coords[self.R.randint(len(coords))]
            return [int(np.clip(c - p // 2, lo, hi)) for c, p, lo, hi in zip(centre, self.patch, low, high)]
        return [int(self.R.randint(lo, hi + 1)) for lo, hi in zip(low, high)]

    def __call__(self, data: dict) -> list[dict] | dict:
        case = load_case(self.folder, data["case_id"])
        image, label = case["image"], case["label"]
        locations = {k: v for k, v in case["locations"].items() if len(v)}
        out = []
        for _ in range(self.num_samples):
            lower = self._lower(image.shape[1:], locations)
            d = {"case_id": data["case_id"], "image": torch.from_numpy(cut_patch(image, lower, self.patch))}
            if label is not None:
                d["label"] = torch.from_numpy(cut_patch(label, lower, self.patch).astype(np.float32))[None]
            out.append(d)
        return out if self.num_samples > 1 else out[0]


def patch_dataset(folder: str | Path, case_ids: Sequence[str], pre: Preprocessing, augment: bool = True):
    """A MONAI dataset of ``case_ids`` yielding augmented patches (a list when ``pre.num_samples`` > 1)."""
    from monai.data import Dataset

    from fusionseg.data.transforms import ToPlainTensord, augmentation

    if not case_ids:
        raise InputError("no training cases to cut patches from; check the fold (splits_final.json) or the dataset")
    if pre.patch_size is None:
        raise InputError("the preprocessing has no patch size; pass --patch-size (e.g. 96,96 or 64,64,64)")
    cut = RandPatchd(folder, pre.patch_size, pre.num_samples, foreground_fraction=pre.foreground_fraction)
    steps = [cut, augmentation(pre) if augment else ToPlainTensord()]
    return Dataset([{"case_id": c} for c in case_ids], transform=Compose(steps))


class CachedCases(Sequence):
    """Whole preprocessed cases as ``{"image": (C, *S) float32, "label": (1, *S) int64, "case_id"}``, read on access."""

    def __init__(self, folder: str | Path, case_ids: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.case_ids = list(case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return CachedCases(self.folder, self.case_ids[index])
        case = load_case(self.folder, self.case_ids[index], mmap=False)
        item = {"case_id": self.case_ids[index], "image": torch.from_numpy(case["image"])}
        if case["label"] is not None:
            item["label"] = torch.from_numpy(case["label"].astype(np.int64))[None]
        return item
