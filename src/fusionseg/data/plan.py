"""The dataset plan: a fingerprint of the training data, then every preprocessing decision from it.

``plan_dataset(info)`` reads the headers of every training case (shapes, spacings in RAS order)
and, where a decision needs voxels, a bounded sample of cases: foreground intensities of CT
channels (at most 16 cases, ≤ 20,000 voxels each) and the size of each case after cropping to its
non-zero box. From the fingerprint it decides, as nnU-Net v2's ``ExperimentPlanner`` does:

- **target spacing**: the median spacing per axis; when the data are strongly anisotropic (the
  coarsest axis is more than 3× coarser than the finest other axis *and* has fewer than a third
  of the voxels of the others, measured on the cropped cases) the coarse axis takes the 10th
  percentile of its spacings instead (never finer than the other axes);
- **patch size**: the median resampled image shape, capped at 256 (2D) / 128 (3D) per axis,
  rounded down to the model's ``size_multiple``, shrunk on its longest axis (in mm) until
  ``batch_size`` patches fit the memory budget (``memory_gb``, default 8 GiB: a 128³ patch × 2);
- **normalisation** per ``channel_names`` (:mod:`fusionseg.data.normalization`);
- **foreground fraction** of training patches: :func:`foreground_fraction` (not nnU-Net's 1/3).

The plan's ``preprocessing`` entry is the plain-data ``pre`` dict stored in checkpoints and read by
train, predict, evaluate and cross-validation (:func:`build_preprocessing` returns it alone).
``plan_hash(pre)`` names the preprocessing it implies; ``plan["data_key"]`` identifies the training
cases by content (:mod:`fusionseg.data.identity`); together they name the cache folder.

Example:
    >>> plan = plan_dataset(scan_dataset("Dataset002_Heart"))
    >>> plan["target_spacing"], plan["patch_size"], plan["batch_size"]
    ([1.25, 1.25, 1.37], [128, 128, 96], 2)
    >>> print(format_plan(plan)); save_plan(plan, "plans.json")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fusionseg.data.backends.common import MAX_VOXELS
from fusionseg.data.datasets import Case, DatasetInfo
from fusionseg.data.identity import case_key, data_key
from fusionseg.data.io import read_header
from fusionseg.data.json_input import read_json_file
from fusionseg.data.normalization import (
    CT_PERCENTILES,
    nonzero_box,
    relative_size_after_cropping,
    scheme_for_channel,
    use_mask_for_norm,
)
from fusionseg.data.validation import load_checked
from fusionseg.errors import InputError
from fusionseg.files import write_text_atomic

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "CACHE_ENV",
    "PLAN_FILE",
    "build_preprocessing",
    "default_cache_root",
    "foreground_fraction",
    "format_plan",
    "load_plan",
    "nnunet_target_spacing",
    "plan_dataset",
    "plan_hash",
    "save_plan",
    "training_case_keys",
]

PLAN_FILE = "plans.json"
CACHE_ENV = "FUSIONSEG_CACHE"
ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD
_PATCH_CAP = {2: 256, 3: 128}
_VOXELS_PER_GIB = {2: 2**21, 3: 2**19}  # training voxels (patch × batch) per GiB: 128³ × 2 ↔ 8 GiB, as nnU-Net
_DEFAULT_MEMORY_GB = 8.0
# Keys of ``pre`` that change the preprocessed voxels (the cache folder is named after their hash).
_DATA_KEYS = ("version", "spatial_dims", "in_channels", "channel_normalisation", "orientation", "target_spacing",
              "num_classes", "ignore_label", "labels")  # fmt: skip


def foreground_fraction(num_classes: int) -> float:
    """Share of training patches centred on a foreground voxel: 1 − 1/``num_classes`` (rounded to 6 digits).

    Each label value, background included, is then as likely a patch centre as with MONAI's
    ``RandCropByLabelClassesd``: 0.5 for one foreground class, 0.75 for three.

    >>> foreground_fraction(3)
    0.666667
    """
    return round(1 - 1 / num_classes, 6)


# ------------------------------------------------------------------------------------ fingerprint


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


def _remembered(
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


def _numbers(values: object, length: int | None = None) -> bool:
    return (
        isinstance(values, list)
        and (length is None or len(values) == length)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)
    )


def _valid_statistics(value: object, ct_channels: list[int]) -> bool:
    """``[{channel: {"scheme": "ct", "clip": [lo, hi], "mean", "std"}}, [relative sizes]]``."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], dict) and _numbers(value[1])):
        return False
    stats = value[0]
    return sorted(stats) == sorted(str(c) for c in ct_channels) and all(
        isinstance(s, dict) and s.get("scheme") == "ct" and _numbers(s.get("clip"), 2)
        and _numbers([s.get("mean"), s.get("std")]) and s["std"] > 0
        for s in stats.values()
    )  # fmt: skip


def _ras_order(meta: dict) -> np.ndarray | None:
    """Input axis i → RAS axis ``order[i]`` (3D), None in 2D."""
    if len(meta["spatial_shape"]) != 3:
        return None
    from nibabel.orientations import io_orientation

    return io_orientation(np.asarray(meta["affine"]))[:, 0].astype(int)


def _to_ras(values: Sequence[float], order: np.ndarray | None) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if order is None:
        return values
    out = np.empty(len(values))
    out[order] = values
    return out


def _ras_shape_spacing(meta: dict) -> tuple[np.ndarray, np.ndarray]:
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
    case: Case, pre: dict, ct_channels: list[int], need_crop_size: bool, seed: int
) -> tuple[list[np.ndarray], float | None]:
    """One case: up to 20,000 foreground intensities per CT channel (label > 0, ignore label excluded)
    and its relative size after cropping to the non-zero box."""
    rng = np.random.default_rng(seed)
    image, _, label, _ = load_checked(case.images, case.label, pre)
    size = relative_size_after_cropping(image) if need_crop_size else None
    ignore = pre.get("ignore_label")
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


def _dataset_statistics(
    info: DatasetInfo,
    pre: dict,
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


def _crop_shapes(info: DatasetInfo, pre: dict) -> np.ndarray:
    """Shape of every training case after cropping to its non-zero box (RAS order) — reads every case."""
    shapes = []
    for case in info.cases:
        image, meta, _, _ = load_checked(case.images, None, pre)
        box = nonzero_box(image)
        shapes.append(_to_ras([b.stop - b.start for b in box], _ras_order(meta)))
    return np.stack(shapes)


# ------------------------------------------------------------------------------------------- plan


def _as_sizes(value: Sequence[float] | float | None, n: int, name: str, kind: type) -> list | None:
    if value is None:
        return None
    values = [value] * n if isinstance(value, (int, float)) else list(value)
    if len(values) != n or any(not isinstance(v, (int, float)) or not 0 < v < float("inf") for v in values):
        raise InputError(f"{name} must be {n} positive numbers (one per spatial axis), got {value!r}")
    if kind is int and any(float(v) != int(v) for v in values):
        raise InputError(f"{name} must be whole numbers, got {value!r}")
    return [kind(v) for v in values]


def _default_patch(
    shape: np.ndarray, spacing: Sequence[float], dims: int, size_multiple: int, batch_size: int, memory_gb: float
) -> list[int]:
    """Median shape capped per axis, rounded to ``size_multiple``, then shrunk (longest axis in mm first)
    until ``batch_size`` patches fit ``memory_gb``."""
    cap = _PATCH_CAP[dims]
    patch = [max(size_multiple, int(min(s, cap)) // size_multiple * size_multiple) for s in shape]
    budget = memory_gb * _VOXELS_PER_GIB[dims]
    mm = np.asarray(spacing, dtype=np.float64)
    while batch_size * float(np.prod(patch)) > budget:
        shrinkable = [i for i in range(dims) if patch[i] > size_multiple]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda i: patch[i] * mm[i])
        patch[axis] -= size_multiple
    return patch


def _check_resampled_size(info: DatasetInfo, shapes: np.ndarray, spacings: np.ndarray, spacing: list | None) -> None:
    """InputError when resampling to ``spacing`` makes a case larger than :data:`MAX_VOXELS` (with the estimate)."""
    if not spacing:
        return
    voxels = np.prod(shapes * spacings / np.asarray(spacing), axis=1) * info.in_channels
    worst = int(np.argmax(voxels))
    if voxels[worst] > MAX_VOXELS:
        raise InputError(
            f"{info.cases[worst].images[0]}: resampled to target spacing {spacing} mm it would hold "
            f"{voxels[worst]:.3g} voxels ({voxels[worst] * 4 / 2**30:,.0f} GiB, "
            f"limit {MAX_VOXELS * 4 / 2**30:.0f} GiB); "
            "choose a coarser --target-spacing (or fix the image's spacing in its header)"
        )


_MAX_PATCH_MEMORY_FACTOR = 64  # an explicit patch × batch may ask for up to 64 × the planning budget (512 GiB)


def _check_patch_memory(patch: list[int], batch_size: int, dims: int, memory_gb: float) -> None:
    """InputError when ``batch_size`` patches need far more memory than any accelerator has (with the estimate)."""
    estimate_gb = batch_size * float(np.prod(patch)) / _VOXELS_PER_GIB[dims]
    if estimate_gb > _MAX_PATCH_MEMORY_FACTOR * memory_gb:
        raise InputError(
            f"patch size {patch} × batch size {batch_size} needs about {estimate_gb:,.0f} GiB to train "
            f"(at most {_MAX_PATCH_MEMORY_FACTOR * memory_gb:,.0f} GiB planned); "
            "choose a smaller --patch-size or --batch-size"
        )


def plan_dataset(
    info: DatasetInfo,
    target_spacing: Sequence[float] | float | str | None = None,
    patch_size: Sequence[int] | int | None = None,
    batch_size: int = 2,
    *,
    num_samples: int | None = None,
    size_multiple: int = 32,
    max_stat_cases: int = 16,
    memory_gb: float | None = None,
    seed: int = 0,
    cache: str | Path | None = None,
    workers: int = 0,
) -> dict:
    """Fingerprint ``info`` and plan its preprocessing → a JSON-able dict (see :func:`build_preprocessing`).

    Args:
        info: from :func:`~fusionseg.data.scan_dataset`.
        target_spacing: None (default) for nnU-Net's rule, ``"median"`` for the median spacing,
            ``"keep"`` to leave every image on its own grid, or numbers (mm, RAS order in 3D).
        patch_size: training patch; default from the median resampled shape and the memory budget.
        batch_size: patches per iteration (recorded; the patch is fitted to it).
        num_samples: patches cut per case and pass (default 1).
        size_multiple: the default patch is a multiple of this (the model's ``size_multiple``).
        max_stat_cases: cases read for the CT statistics and nnU-Net's non-zero-mask rule.
        memory_gb: budget for ``batch_size`` training patches (default 8 GiB).
        cache: cache root (default :func:`default_cache_root`); the statistics that need voxels are
            remembered there, keyed by the training cases' content keys.
        workers: processes that read those cases (0 or 1: this one).

    Returns ``{"dataset", "num_cases", "fingerprint": {"median_shape", "median_spacing",
    "spacing_range"}, "target_spacing" (None: keep), "patch_size", "batch_size", "memory_gb",
    "preprocessing": pre, "hash", "data_key"}`` (``hash``: the preprocessing; ``data_key``: the
    training cases' content, :mod:`fusionseg.data.identity`).
    """
    if num_samples is None:
        num_samples = 1
    if not isinstance(num_samples, int) or num_samples < 1:
        raise InputError(f"num_samples must be a positive int, got {num_samples!r}")
    if not isinstance(size_multiple, int) or size_multiple < 1:
        raise InputError(f"size_multiple must be a positive int, got {size_multiple!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    memory_gb = float(memory_gb or _DEFAULT_MEMORY_GB)
    cache = Path(cache).expanduser() if cache else None
    if not info.cases:
        raise InputError(f"{info.root}: the dataset has no training cases")
    reserved = next((c for c in info.cases if f"{c.case_id}.json" == PLAN_FILE), None)
    if reserved is not None:  # its CASE.json would replace the cache's plans.json
        raise InputError(
            f"{reserved.images[0]}: the case name {reserved.case_id!r} is reserved in the cache; rename it"
        )
    dims = info.spatial_dims
    headers = [read_header(c.images[0]) for c in info.cases]
    shapes, spacings = zip(*(_ras_shape_spacing(h) for h in headers))
    if any(len(s) != dims for s in shapes):
        bad = next(h for h, s in zip(headers, shapes) if len(s) != dims)
        raise InputError(
            f"{bad['path']}: {len(bad['spatial_shape'])}D image in a {dims}D dataset; remove or convert it"
        )
    shapes_arr, spacings_arr = np.stack(shapes), np.stack(spacings)
    case_keys = training_case_keys(info)
    content = sorted(case_keys.items())
    median_shape = np.median(shapes_arr, axis=0)
    median_spacing = np.median(spacings_arr, axis=0)
    schemes = [scheme_for_channel(n) for n in info.channel_names]
    modality = "2d" if dims == 2 else info.modality
    layout = info.label_layout
    pre = {
        "version": 2,
        "layout": info.layout,
        "spatial_dims": dims,
        "in_channels": info.in_channels,
        **layout.to_preprocessing(),
        "channel_names": list(info.channel_names),
        "modality": modality,
        "normalisation": "ct" if "ct" in schemes else schemes[0],
        "channel_normalisation": [{"scheme": s} for s in schemes],
        "use_mask_for_norm": False,
        "median_relative_size_after_cropping": None,
        "orientation": "RAS" if dims == 3 else None,
        "target_spacing": None,
        "patch_size": None,
        "num_samples": num_samples,
        "foreground_fraction": foreground_fraction(layout.num_classes),
        "median_shape": [float(s) for s in median_shape],
        "median_spacing": [float(s) for s in median_spacing],
        "binary_as_255": dims == 2 and layout.num_classes == 2 and not layout.has_regions,
    }
    if getattr(info, "original_labels", None):  # `fusionseg relabel`: predictions go back to these values
        pre["original_labels"] = list(info.original_labels)
    if isinstance(target_spacing, str):
        if target_spacing not in ("median", "keep"):
            raise InputError(f'target_spacing must be numbers, "median", "keep" or None, got {target_spacing!r}')
        spacing = [float(s) for s in median_spacing] if target_spacing == "median" else None
    elif target_spacing is None:
        try:
            spacing = nnunet_target_spacing(spacings_arr)
        except LookupError:
            crop = _remembered(
                "crop-shapes",
                content,
                lambda: _crop_shapes(info, pre).tolist(),
                cache,
                lambda v: isinstance(v, list) and len(v) == len(info.cases) and all(_numbers(s, dims) for s in v),
            )
            spacing = nnunet_target_spacing(spacings_arr, np.asarray(crop))
    else:
        spacing = _as_sizes(target_spacing, dims, "target_spacing", float)
    pre["target_spacing"] = spacing
    _check_resampled_size(info, shapes_arr, spacings_arr, spacing)
    resampled_shape = median_shape * median_spacing / np.asarray(spacing) if spacing else median_shape
    patch = _as_sizes(patch_size, dims, "patch_size", int) or _default_patch(
        resampled_shape, spacing or median_spacing, dims, size_multiple, batch_size, memory_gb
    )
    _check_patch_memory(patch, batch_size, dims, memory_gb)
    pre["patch_size"] = patch
    ct_channels = [c for c, s in enumerate(schemes) if s == "ct"]
    need_sizes = "zscore" in schemes and not info.use_mask_for_norm
    sizes: list[float] = []
    if ct_channels or need_sizes:
        key = [content, ct_channels, need_sizes, max_stat_cases, seed,
               pre["ignore_label"], pre["num_classes"]]  # fmt: skip
        stats, sizes = _remembered(
            "statistics",
            key,
            lambda: _dataset_statistics(info, pre, ct_channels, need_sizes, max_stat_cases, seed, workers),
            cache,
            lambda v: _valid_statistics(v, ct_channels),
        )
        for c, spec in stats.items():
            pre["channel_normalisation"][int(c)] = spec
        if sizes:
            pre["median_relative_size_after_cropping"] = float(np.median(sizes))
    use_mask = use_mask_for_norm(sizes, info.use_mask_for_norm)
    pre["use_mask_for_norm"] = use_mask
    for spec in pre["channel_normalisation"]:
        if spec["scheme"] == "zscore":
            spec["use_mask"] = use_mask
    return {
        "dataset": info.name or (info.root.name if info.root else ""),
        "num_cases": len(info.cases),
        "fingerprint": {
            "median_shape": pre["median_shape"],
            "median_spacing": pre["median_spacing"],
            "spacing_range": [[float(v) for v in spacings_arr.min(0)], [float(v) for v in spacings_arr.max(0)]],
            "resampled_median_shape": [float(s) for s in resampled_shape],
        },
        "target_spacing": spacing,
        "patch_size": patch,
        "batch_size": batch_size,
        "memory_gb": memory_gb,
        "preprocessing": pre,
        "hash": plan_hash(pre),
        "data_key": data_key(case_keys),
    }


def build_preprocessing(
    info: DatasetInfo,
    target_spacing: Sequence[float] | float | str | None = None,
    patch_size: Sequence[int] | int | None = None,
    *,
    num_samples: int | None = None,
    size_multiple: int = 32,
    max_stat_cases: int = 16,
    seed: int = 0,
) -> dict:
    """The plain-data preprocessing description of :func:`plan_dataset` (JSON-able; goes into checkpoints).

    Keys:

    - geometry: ``spatial_dims``, ``orientation`` ("RAS" in 3D), ``target_spacing`` (list, or None
      to keep each image's grid), ``patch_size``, ``num_samples``, ``median_shape``, ``median_spacing``;
    - input: ``in_channels``, ``channel_names``, ``modality``, ``layout``;
    - labels (:meth:`LabelLayout.to_preprocessing`): ``labels`` (``{"0": "background", ...}``, string
      keys, ignore excluded), ``num_classes``, ``out_channels`` (network outputs: regions or classes),
      ``activation`` ("softmax" | "sigmoid"), ``regions`` (lists of label values, or None),
      ``region_names``, ``regions_class_order``, ``ignore_label`` (int or None);
    - normalisation: ``channel_normalisation`` (one dict per channel: ``{"scheme": "ct", "clip",
      "mean", "std"}``, ``{"scheme": "zscore", "use_mask": bool}``, ``{"scheme": "noNorm"}``,
      ``{"scheme": "rescale_to_0_1"}``, ``{"scheme": "rgb_to_0_1"}``), ``normalisation`` (summary:
      "ct" if any channel is CT, else the first channel's scheme), ``use_mask_for_norm``,
      ``median_relative_size_after_cropping`` (None when not measured);
    - ``binary_as_255``, ``version``.
    """
    plan = plan_dataset(
        info,
        target_spacing,
        patch_size,
        num_samples=num_samples,
        size_multiple=size_multiple,
        max_stat_cases=max_stat_cases,
        seed=seed,
    )
    return plan["preprocessing"]


def plan_hash(pre: dict) -> str:
    """12 hex digits naming the preprocessed data ``pre`` implies (same hash ↔ same cached voxels)."""
    data = {k: pre.get(k) for k in _DATA_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def save_plan(plan: dict, path: str | Path) -> Path:
    """Write ``plan`` as JSON (atomically)."""
    return write_text_atomic(Path(path), json.dumps(plan, indent=2) + "\n")


def load_plan(path: str | Path) -> dict:
    """Read a plan written by :func:`save_plan` (InputError naming the file if it is not one)."""
    plan = read_json_file(path, "rerun `fusionseg plan`")
    if not isinstance(plan, dict) or "preprocessing" not in plan:
        raise InputError(f"{path}: not a fusionseg plan (no 'preprocessing'); rerun `fusionseg plan`")
    return plan


def _fmt(values) -> str:
    return "—" if values is None else " × ".join(f"{v:g}" for v in values)


def format_plan(plan: dict) -> str:
    """A short table of the plan (what `fusionseg plan` prints)."""
    pre, fp, spacing = plan["preprocessing"], plan["fingerprint"], plan["target_spacing"]
    norm = ", ".join(
        spec["scheme"] + (f" clip [{spec['clip'][0]:.4g}, {spec['clip'][1]:.4g}]" if "clip" in spec else "")
        for spec in pre["channel_normalisation"]
    )
    rows = [
        ("dataset", f"{plan['dataset']} ({plan['num_cases']} training cases, {pre['spatial_dims']}D)"),
        ("median shape", _fmt([round(v) for v in fp["median_shape"]])),
        ("median spacing (mm)", _fmt([round(v, 4) for v in fp["median_spacing"]])),
        ("target spacing (mm)", _fmt(None if spacing is None else [round(v, 4) for v in spacing])),
        ("resampled median shape", _fmt([round(v) for v in fp["resampled_median_shape"]])),
        ("patch size", _fmt(plan["patch_size"])),
        ("batch size", f"{plan['batch_size']} (memory budget {plan['memory_gb']:g} GiB)"),
        ("normalisation", norm + (" (inside the non-zero mask)" if pre["use_mask_for_norm"] else "")),
        ("plan hash", plan["hash"]),
        ("data key", plan.get("data_key") or "—"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
