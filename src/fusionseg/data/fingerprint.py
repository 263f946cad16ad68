"""The fingerprint of a training set: what planning reads from its cases (:mod:`fusionseg.data.plan` decides).

Headers of every case give shapes and spacings in RAS order (:func:`ras_shape_spacing`); where a decision
needs voxels, a bounded sample of cases is read: foreground intensities of CT channels (at most 16 cases,
≤ 20,000 voxels each; :func:`dataset_statistics`) and the size of each case after cropping to its non-zero
box (:func:`crop_shapes`). :func:`remembered` keeps such results in ``<cache root>/fingerprints/``, keyed by
the training cases' content, so a second plan of unchanged data reads no voxels.

:func:`nnunet_target_spacing` is nnU-Net v2's rule: the median spacing per axis; when the data are strongly
anisotropic (the coarsest axis is more than 3× coarser than the finest other axis *and* has fewer than a
third of the voxels of the others, measured on the cropped cases) the coarse axis takes the 10th
percentile of its spacings instead (never finer than the other axes).

Example:
    >>> nnunet_target_spacing(np.array([[1.0, 1.0, 1.2], [0.9, 1.1, 1.0]]))
    [0.95, 1.05, 1.1]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fusionseg.data.datasets import Case, DatasetInfo
from fusionseg.data.identity import case_key
from fusionseg.data.normalization import CT_PERCENTILES, nonzero_box, relative_size_after_cropping
from fusionseg.data.preprocessing import Preprocessing
from fusionseg.data.validation import load_checked
from fusionseg.errors import InputError
from fusionseg.files import write_text_atomic

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "CACHE_ENV",
    "crop_shapes",
    "dataset_statistics",
    "default_cache_root",
    "is_numbers",
    "nnunet_target_spacing",
    "ras_shape_spacing",
    "remembered",
    "training_case_keys",
    "valid_statistics",
]

CACHE_ENV = "FUSIONSEG_CACHE"
ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD


def default_cache_root() -> Path:
    """``$FUSIONSEG_CACHE``, else ``$XDG_CACHE_HOME/fusionseg/preprocessed`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fusionseg" / "preprocessed"


def training_case_keys(info: DatasetInfo) -> dict[str, str]:
    """``{case id: content key}`` of the training cases (:func:`fusionseg.data.identity.case_key`);
    InputError naming a file that vanished."""
    try:
        return {case.case_id: case_key(case, info.root) for case in info.cases}
    except OSError as err:
        raise InputError(f"{err.filename}: cannot read ({err.strerror}); restore the file or scan again") from None


def remembered(
    what: str, key: object, compute: Callable[[], object], cache: Path | None, valid: Callable[[object], bool]
) -> object:
    """``compute()``, stored in ``<cache root>/fingerprints/`` under a hash of ``key`` (which includes the
    training cases' content keys), so a second plan of unchanged data reads no voxels. A stored value
    whose checksum or shape (``valid``) is wrong is computed again."""
    digest = hashlib.sha256(json.dumps([what, key], sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = (cache or default_cache_root()) / "fingerprints" / f"{what}-{digest}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored["sha256"] == _checksum(stored["value"]) and valid(stored["value"]):
            return stored["value"]
    except (OSError, ValueError, RecursionError, TypeError, KeyError):
        pass
    value = json.loads(json.dumps(compute()))
    with contextlib.suppress(OSError, InputError):  # an unwritable cache only costs the next plan a re-read
        write_text_atomic(path, json.dumps({"value": value, "sha256": _checksum(value)}))
    return value


def _checksum(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def is_numbers(values: object, length: int | None = None) -> bool:
    return (
        isinstance(values, list)
        and (length is None or len(values) == length)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)
    )


def valid_statistics(value: object, ct_channels: list[int]) -> bool:
    """``[{channel: {"scheme": "ct", "clip": [lo, hi], "mean", "std"}}, [relative sizes]]``."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], dict) and is_numbers(value[1])):
        return False
    stats = value[0]
    return sorted(stats) == sorted(str(c) for c in ct_channels) and all(
        isinstance(s, dict) and s.get("scheme") == "ct" and is_numbers(s.get("clip"), 2)
        and is_numbers([s.get("mean"), s.get("std")]) and s["std"] > 0
        for s in stats.values()
    )  # fmt: skip


def _ras_order(meta: dict) -> np.ndarray | None:
    """Input axis i → RAS axis ``order[i]`` (3D), None in 2D."""
    if len(meta["spatial_shape"]) != 3:
        return None
    from nibabel.orientations import io_orientation

    return io_orientation(np.asarray(meta["affine"]))[:, 0].astype(int)


def _to_ras(values: Sequence[float], order: np.ndarray | None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if order is None:
        return array
    out = np.empty(len(array))
    out[order] = array
    return out


def ras_shape_spacing(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Spatial shape and spacing after reorientation to RAS (3D) — what the patch size refers to."""
    order = _ras_order(meta)
    return _to_ras(meta["spatial_shape"], order), _to_ras(meta["spacing"], order)


def nnunet_target_spacing(
    spacings: np.ndarray, crop_shapes: np.ndarray | None = None, threshold: float = ANISOTROPY_THRESHOLD
) -> list[float]:
    """nnU-Net v2's full-resolution target spacing of cases with ``spacings`` (N, D) and cropped shapes (N, D).

    ``crop_shapes`` is only read when the median spacing is anisotropic (pass None to learn whether
    it is needed: a ``LookupError`` says so).
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    if not others:
        return [float(t) for t in target]
    other_spacings = [target[i] for i in others]
    if not target[worst] > threshold * max(other_spacings):
        return [float(t) for t in target]
    coarse = float(np.percentile(spacings[:, worst], 10))
    if coarse < max(other_spacings):
        coarse = max(max(other_spacings), coarse) + 1e-5
    if coarse == target[worst]:
        return [float(t) for t in target]  # the same whatever the shapes
    if crop_shapes is None:
        raise LookupError("the cropped shapes decide the target spacing")
    size = np.percentile(np.asarray(crop_shapes, dtype=np.float64), 50, axis=0)
    if size[worst] * threshold < min(size[i] for i in others):
        target[worst] = coarse
    return [float(t) for t in target]


def _stat_cases(cases: list[Case], max_cases: int, rng: np.random.Generator) -> list[Case]:
    if len(cases) <= max_cases:
        return list(cases)
    return [cases[i] for i in sorted(rng.choice(len(cases), max_cases, replace=False))]


def _case_statistics(
    case: Case, pre: Preprocessing, ct_channels: list[int], need_crop_size: bool, seed: int
) -> tuple[list[np.ndarray], float | None]:
    """One case: up to 20,000 foreground intensities per CT channel (label > 0, ignore label excluded)
    and its relative size after cropping to the non-zero box."""
    rng = np.random.default_rng(seed)
    image, _, label, _ = load_checked(case.images, case.label, pre)
    size = relative_size_after_cropping(image) if need_crop_size else None
    ignore = pre.label_layout.ignore_label
    mask = np.ones(image.shape[1:], dtype=bool)
    if label is not None and ct_channels:
        foreground = (label > 0) & (label != ignore) if ignore is not None else label > 0
        mask = foreground if foreground.any() else mask
    samples = []
    for c in ct_channels:
        values = image[c][mask]
        if values.size > 20000:
            values = rng.choice(values, 20000, replace=False)
        samples.append(values)
    return samples, size


def dataset_statistics(
    info: DatasetInfo,
    pre: Preprocessing,
    ct_channels: list[int],
    need_crop_sizes: bool,
    max_cases: int,
    seed: int,
    workers: int = 0,
) -> tuple[dict[int, dict], list[float]]:
    """Up to ``max_cases`` training cases (in ``workers`` processes when > 1): foreground intensity
    statistics per CT channel and each case's relative size after cropping (for nnU-Net's mask rule)."""
    rng = np.random.default_rng(seed)
    cases = _stat_cases(info.cases, max_cases, rng)
    jobs = [(case, pre, ct_channels, need_crop_sizes, seed + i) for i, case in enumerate(cases)]
    if workers > 1 and len(cases) > 1:
        from fusionseg.data.workers import process_pool

        with process_pool(min(workers, len(cases))) as pool:
            results = list(pool.map(_case_statistics, *zip(*jobs)))
    else:
        results = [_case_statistics(*job) for job in jobs]
    sizes = [size for _, size in results if size is not None]
    stats = {}
    for k, c in enumerate(ct_channels):
        values = np.concatenate([samples[k] for samples, _ in results]).astype(np.float64)
        lower, upper = np.percentile(values, CT_PERCENTILES)
        stats[c] = {
            "scheme": "ct",
            "clip": [float(lower), float(upper)],
            "mean": float(values.mean()),
            "std": float(max(values.std(), 1e-8)),
        }
    return stats, sizes


def crop_shapes(info: DatasetInfo, pre: Preprocessing) -> np.ndarray:
    """Shape of every training case after cropping to its non-zero box (RAS order) — reads every case."""
    shapes = []
    for case in info.cases:
        image, meta, _, _ = load_checked(case.images, None, pre)
        box = nonzero_box(image)
        shapes.append(_to_ras([b.stop - b.start for b in box], _ras_order(meta)))
    return np.stack(shapes)
