"""The dataset plan: every preprocessing decision, from the fingerprint of the training data.

``plan_dataset(info)`` reads the training cases' fingerprint (:mod:`fusionseg.data.fingerprint`: shapes
and spacings in RAS order, CT foreground statistics, sizes after cropping) and decides, as nnU-Net v2's
``ExperimentPlanner`` does:

- **target spacing**: :func:`~fusionseg.data.fingerprint.nnunet_target_spacing` (the median spacing;
  the 10th percentile on the coarse axis of strongly anisotropic data);
- **patch size**: the median resampled image shape, capped at 256 (2D) / 128 (3D) per axis,
  rounded down to the model's ``size_multiple``, shrunk on its longest axis (in mm) until
  ``batch_size`` patches fit the memory budget (``memory_gb``, default 8 GiB: a 128³ patch × 2);
- **normalisation** per ``channel_names`` (:mod:`fusionseg.data.normalization`);
- **foreground fraction** of training patches: :func:`foreground_fraction` (not nnU-Net's 1/3).

It returns a frozen :class:`Plan` whose ``preprocessing`` (:class:`~fusionseg.data.preprocessing.Preprocessing`)
is what checkpoints store and train, predict, evaluate and cross-validation read
(:func:`build_preprocessing` returns it alone); the plan's target spacing and patch size are the
preprocessing's. ``plan.hash`` (:func:`plan_hash`) names the preprocessed voxels it implies and
``plan.data_key`` the training cases' content (:mod:`fusionseg.data.identity`); together they name the
cache folder. ``plans.json`` holds ``plan.to_dict()``.

Example:
    >>> plan = plan_dataset(scan_dataset("Dataset002_Heart"))
    >>> plan.target_spacing, plan.patch_size, plan.batch_size
    ((1.25, 1.25, 1.37), (128, 128, 96), 2)
    >>> print(format_plan(plan)); save_plan(plan, "plans.json")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np

from fusionseg.data.backends.common import MAX_VOXELS
from fusionseg.data.datasets import DatasetInfo
from fusionseg.data.fingerprint import (
    ANISOTROPY_THRESHOLD,
    CACHE_ENV,
    crop_shapes,
    dataset_statistics,
    default_cache_root,
    is_numbers,
    nnunet_target_spacing,
    ras_shape_spacing,
    remembered,
    training_case_keys,
    valid_statistics,
)
from fusionseg.data.identity import data_key
from fusionseg.data.io import read_header
from fusionseg.data.normalization import scheme_for_channel, use_mask_for_norm
from fusionseg.data.plan_record import (
    DEFAULT_MEMORY_GB,
    PLAN_FILE,
    Fingerprint,
    Plan,
    format_plan,
    load_plan,
    plan_hash,
    save_plan,
)
from fusionseg.data.preprocessing import ChannelNormalisation, Preprocessing, foreground_fraction
from fusionseg.errors import InputError

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "CACHE_ENV",
    "PLAN_FILE",
    "Fingerprint",
    "Plan",
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

_PATCH_CAP = {2: 256, 3: 128}
_VOXELS_PER_GIB = {2: 2**21, 3: 2**19}  # training voxels (patch × batch) per GiB: 128³ × 2 ↔ 8 GiB, as nnU-Net


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
) -> Plan:
    """Fingerprint ``info`` and plan its preprocessing → a :class:`Plan`.

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
    """
    if num_samples is None:
        num_samples = 1
    if not isinstance(num_samples, int) or num_samples < 1:
        raise InputError(f"num_samples must be a positive int, got {num_samples!r}")
    if not isinstance(size_multiple, int) or size_multiple < 1:
        raise InputError(f"size_multiple must be a positive int, got {size_multiple!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    memory_gb = float(memory_gb or DEFAULT_MEMORY_GB)
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
    shapes, spacings = zip(*(ras_shape_spacing(h) for h in headers))
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
    layout = info.label_layout
    original = getattr(info, "original_labels", None)  # `fusionseg relabel`: predictions go back to these values
    pre = Preprocessing(  # what reading a case needs; spacing, patch and normalisation follow
        spatial_dims=dims,
        in_channels=info.in_channels,
        label_layout=layout,
        channel_normalisation=tuple(ChannelNormalisation(s) for s in schemes),
        foreground_fraction=foreground_fraction(layout.num_classes),
        dataset_layout=info.layout,
        channel_names=tuple(info.channel_names),
        modality="2d" if dims == 2 else info.modality,
        orientation="RAS" if dims == 3 else None,
        num_samples=num_samples,
        median_shape=tuple(float(s) for s in median_shape),
        median_spacing=tuple(float(s) for s in median_spacing),
        binary_as_255=dims == 2 and layout.num_classes == 2 and not layout.has_regions,
        original_labels=tuple(original) if original else None,
    )
    spacing = _target_spacing(info, pre, target_spacing, spacings_arr, content, cache)
    _check_resampled_size(info, shapes_arr, spacings_arr, spacing)
    resampled_shape = median_shape * median_spacing / np.asarray(spacing) if spacing else median_shape
    patch = _as_sizes(patch_size, dims, "patch_size", int) or _default_patch(
        resampled_shape, spacing or median_spacing, dims, size_multiple, batch_size, memory_gb
    )
    _check_patch_memory(patch, batch_size, dims, memory_gb)
    pre = replace(pre, target_spacing=None if spacing is None else tuple(spacing), patch_size=tuple(patch))
    pre = _normalisation(info, pre, schemes, content, max_stat_cases, seed, cache, workers)
    return Plan(
        dataset=info.name or (info.root.name if info.root else ""),
        num_cases=len(info.cases),
        fingerprint=Fingerprint(
            spacing_range=(tuple(float(v) for v in spacings_arr.min(0)), tuple(float(v) for v in spacings_arr.max(0))),
            resampled_median_shape=tuple(float(s) for s in resampled_shape),
        ),
        batch_size=batch_size,
        memory_gb=memory_gb,
        preprocessing=pre,
        data_key=data_key(case_keys),
    )


def _target_spacing(
    info: DatasetInfo,
    pre: Preprocessing,
    target_spacing: Sequence[float] | float | str | None,
    spacings: np.ndarray,
    content: list,
    cache: Path | None,
) -> list[float] | None:
    """The ``target_spacing`` asked for, or nnU-Net's rule (reading the cropped shapes when it needs them)."""
    dims = pre.spatial_dims
    if isinstance(target_spacing, str):
        if target_spacing not in ("median", "keep"):
            raise InputError(f'target_spacing must be numbers, "median", "keep" or None, got {target_spacing!r}')
        return list(pre.median_spacing or ()) if target_spacing == "median" else None
    if target_spacing is not None:
        return _as_sizes(target_spacing, dims, "target_spacing", float)
    try:
        return nnunet_target_spacing(spacings)
    except LookupError:
        crop = remembered(
            "crop-shapes",
            content,
            lambda: crop_shapes(info, pre).tolist(),
            cache,
            lambda v: isinstance(v, list) and len(v) == len(info.cases) and all(is_numbers(s, dims) for s in v),
        )
        return nnunet_target_spacing(spacings, np.asarray(crop))


def _normalisation(
    info: DatasetInfo,
    pre: Preprocessing,
    schemes: list[str],
    content: list,
    max_stat_cases: int,
    seed: int,
    cache: Path | None,
    workers: int,
) -> Preprocessing:
    """``pre`` with the CT channels' statistics and nnU-Net's non-zero-mask rule for z-score channels."""
    ct_channels = [c for c, s in enumerate(schemes) if s == "ct"]
    need_sizes = "zscore" in schemes and not info.use_mask_for_norm
    norms = list(pre.channel_normalisation)
    sizes: list[float] = []
    median_size = None
    if ct_channels or need_sizes:
        key = [content, ct_channels, need_sizes, max_stat_cases, seed, pre.label_layout.ignore_label, pre.num_classes]
        stats, sizes = cast(  # checked by valid_statistics: [{channel: CT statistics}, [relative sizes]]
            "tuple[dict[str, dict], list[float]]",
            remembered(
                "statistics",
                key,
                lambda: dataset_statistics(info, pre, ct_channels, need_sizes, max_stat_cases, seed, workers),
                cache,
                lambda v: valid_statistics(v, ct_channels),
            ),
        )
        for c, spec in stats.items():
            norms[int(c)] = ChannelNormalisation.from_dict(spec)
        if sizes:
            median_size = float(np.median(sizes))
    use_mask = use_mask_for_norm(sizes, info.use_mask_for_norm)
    norms = [replace(n, use_mask=use_mask) if n.scheme == "zscore" else n for n in norms]
    return replace(
        pre,
        channel_normalisation=tuple(norms),
        use_mask_for_norm=use_mask,
        median_relative_size_after_cropping=median_size,
    )


def build_preprocessing(
    info: DatasetInfo,
    target_spacing: Sequence[float] | float | str | None = None,
    patch_size: Sequence[int] | int | None = None,
    *,
    num_samples: int | None = None,
    size_multiple: int = 32,
    max_stat_cases: int = 16,
    seed: int = 0,
) -> Preprocessing:
    """The :class:`~fusionseg.data.preprocessing.Preprocessing` of :func:`plan_dataset` (what checkpoints store).

    Its dict form (``to_dict()``, what checkpoints, plans.json and bundles hold) has the entries:

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
    - training: ``foreground_fraction``; output: ``binary_as_255``, ``original_labels`` (after
      ``fusionseg relabel`` only); ``version``.
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
    return plan.preprocessing
