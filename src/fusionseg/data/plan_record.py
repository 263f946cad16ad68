"""The plan of a dataset as a frozen object and as ``plans.json``: :class:`Plan`, :func:`plan_hash`,
:func:`save_plan`, :func:`load_plan`, :func:`format_plan` (:func:`fusionseg.data.plan.plan_dataset` makes plans).

A plan holds what planning measured (:class:`Fingerprint`), the batch and memory budget, and the
:class:`~fusionseg.data.preprocessing.Preprocessing` that holds target spacing and patch size (``plan.patch_size``
reads it there). ``plans.json`` is ``plan.to_dict()``: the target spacing, patch size, median shape and spacing
and the hash appear beside the preprocessing for readers of the file; :meth:`Plan.from_dict` checks that they agree.

Example:
    >>> plan = load_plan("cache/Dataset002_Heart-3f2a.../plans.json")
    >>> plan.hash == plan_hash(plan.preprocessing), plan.with_patch_size((96, 96, 96)).patch_size
    (True, (96, 96, 96))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fusionseg.data.fingerprint import is_numbers
from fusionseg.data.json_input import read_json_file
from fusionseg.data.preprocessing import Preprocessing
from fusionseg.errors import InputError
from fusionseg.files import write_text_atomic

__all__ = [
    "DEFAULT_MEMORY_GB",
    "PLAN_FILE",
    "Fingerprint",
    "Plan",
    "format_plan",
    "load_plan",
    "plan_hash",
    "save_plan",
]

PLAN_FILE = "plans.json"
DEFAULT_MEMORY_GB = 8.0
# Entries of the stored preprocessing that change the preprocessed voxels (the cache folder is named after their hash).
_DATA_KEYS = ("version", "spatial_dims", "in_channels", "channel_normalisation", "orientation", "target_spacing",
              "num_classes", "ignore_label", "labels")  # fmt: skip


def plan_hash(pre: Preprocessing) -> str:
    """12 hex digits naming the preprocessed data ``pre`` implies (same hash ↔ same cached voxels)."""
    stored = pre.to_dict()
    data = {k: stored.get(k) for k in _DATA_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Fingerprint:
    """What planning measured besides the preprocessing's ``median_shape`` / ``median_spacing``.

    Attributes:
        spacing_range: (smallest, largest) spacing per axis over the training cases (mm, RAS order).
        resampled_median_shape: the median shape after resampling to the target spacing.
    """

    spacing_range: tuple[tuple[float, ...], tuple[float, ...]]
    resampled_median_shape: tuple[float, ...]


@dataclass(frozen=True)
class Plan:
    """The plan of a dataset (:func:`~fusionseg.data.plan.plan_dataset`); its target spacing and patch size are
    its preprocessing's.

    Attributes:
        dataset: the dataset's name (names the cache folder).
        num_cases: training cases planned for.
        fingerprint: measurements besides those the preprocessing records.
        batch_size: patches per iteration (the patch was fitted to it).
        memory_gb: the budget for ``batch_size`` training patches.
        preprocessing: every preprocessing setting.
        data_key: the training cases' content (:mod:`fusionseg.data.identity`); None in plans of an older fusionseg.
    """

    dataset: str
    num_cases: int
    fingerprint: Fingerprint
    batch_size: int
    memory_gb: float
    preprocessing: Preprocessing
    data_key: str | None = None

    @property
    def target_spacing(self) -> tuple[float, ...] | None:
        """mm per axis (RAS order), None to keep each image's grid."""
        return self.preprocessing.target_spacing

    @property
    def patch_size(self) -> tuple[int, ...] | None:
        return self.preprocessing.patch_size

    @property
    def hash(self) -> str:
        """:func:`plan_hash` of the preprocessing."""
        return plan_hash(self.preprocessing)

    def with_patch_size(self, patch_size: Sequence[int]) -> Plan:
        """The same plan with another training patch (e.g. rounded up to the model's size multiple)."""
        return replace(self, preprocessing=replace(self.preprocessing, patch_size=tuple(int(p) for p in patch_size)))

    def to_dict(self) -> dict:
        """The JSON-able dict of ``plans.json``."""
        stored = self.preprocessing.to_dict()
        low, high = self.fingerprint.spacing_range
        return {
            "dataset": self.dataset,
            "num_cases": self.num_cases,
            "fingerprint": {
                "median_shape": stored["median_shape"],
                "median_spacing": stored["median_spacing"],
                "spacing_range": [list(low), list(high)],
                "resampled_median_shape": list(self.fingerprint.resampled_median_shape),
            },
            "target_spacing": stored["target_spacing"],
            "patch_size": stored["patch_size"],
            "batch_size": self.batch_size,
            "memory_gb": self.memory_gb,
            "preprocessing": stored,
            "hash": self.hash,
            "data_key": self.data_key,
        }

    @classmethod
    def from_dict(cls, d: object) -> Plan:
        """The plan of a ``plans.json`` dict; InputError naming the first entry that does not fit."""
        if not isinstance(d, Mapping) or not isinstance(d.get("preprocessing"), Mapping):
            raise InputError("not a fusionseg plan (no 'preprocessing')")
        pre = Preprocessing.from_dict(d["preprocessing"])
        fp = d.get("fingerprint")
        if not isinstance(fp, Mapping):
            raise InputError("the plan has no fingerprint")
        ranges, resampled = fp.get("spacing_range"), fp.get("resampled_median_shape")
        if not (isinstance(ranges, list) and len(ranges) == 2 and all(is_numbers(r) for r in ranges)
                and isinstance(resampled, list) and is_numbers(resampled)):  # fmt: skip
            raise InputError("the plan's fingerprint lacks spacing_range or resampled_median_shape")
        counts = {k: d.get(k) for k in ("num_cases", "batch_size")}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
            raise InputError(f"the plan's num_cases / batch_size are {counts}, expected whole numbers")
        data_key, memory_gb = d.get("data_key"), d.get("memory_gb", DEFAULT_MEMORY_GB)
        plan = cls(
            dataset=str(d.get("dataset") or ""),
            num_cases=int(d["num_cases"]),
            fingerprint=Fingerprint(
                (tuple(float(v) for v in ranges[0]), tuple(float(v) for v in ranges[1])),
                tuple(float(v) for v in resampled),
            ),
            batch_size=int(d["batch_size"]),
            memory_gb=float(memory_gb) if is_numbers([memory_gb]) else DEFAULT_MEMORY_GB,
            preprocessing=pre,
            data_key=data_key if isinstance(data_key, str) else None,  # None: an older fusionseg's plan
        )
        stored = plan.to_dict()
        differ = [k for k in ("target_spacing", "patch_size", "hash") if k in d and d[k] != stored[k]]
        differ += [
            f"fingerprint.{k}" for k in ("median_shape", "median_spacing") if fp.get(k) != stored["fingerprint"][k]
        ]
        if differ:
            raise InputError(f"the plan's {', '.join(differ)} do not match its preprocessing (edited by hand?)")
        return plan


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan`` as JSON (atomically)."""
    return write_text_atomic(Path(path), json.dumps(plan.to_dict(), indent=2) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read a plan written by :func:`save_plan` (InputError naming the file if it is not one)."""
    stored = read_json_file(path, "rerun `fusionseg plan`")
    try:
        return Plan.from_dict(stored)
    except InputError as err:
        raise InputError(f"{path}: {err}; rerun `fusionseg plan`") from None


def _fmt(values) -> str:
    return "—" if values is None else " × ".join(f"{v:g}" for v in values)


def format_plan(plan: Plan) -> str:
    """A short table of the plan (what `fusionseg plan` prints)."""
    pre, fp, spacing = plan.preprocessing, plan.fingerprint, plan.target_spacing
    norm = ", ".join(
        spec.scheme + (f" clip [{spec.clip[0]:.4g}, {spec.clip[1]:.4g}]" if spec.clip is not None else "")
        for spec in pre.channel_normalisation
    )
    rows = [
        ("dataset", f"{plan.dataset} ({plan.num_cases} training cases, {pre.spatial_dims}D)"),
        ("median shape", _fmt(None if pre.median_shape is None else [round(v) for v in pre.median_shape])),
        (
            "median spacing (mm)",
            _fmt(None if pre.median_spacing is None else [round(v, 4) for v in pre.median_spacing]),
        ),
        ("target spacing (mm)", _fmt(None if spacing is None else [round(v, 4) for v in spacing])),
        ("resampled median shape", _fmt([round(v) for v in fp.resampled_median_shape])),
        ("patch size", _fmt(plan.patch_size)),
        ("batch size", f"{plan.batch_size} (memory budget {plan.memory_gb:g} GiB)"),
        ("normalisation", norm + (" (inside the non-zero mask)" if pre.use_mask_for_norm else "")),
        ("plan hash", plan.hash),
        ("data key", plan.data_key or "—"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
