"""Segmentation metrics of label maps (NumPy/SciPy): Dice, IoU, HD95, mean surface distance, NSD.

Per case and per foreground class (or region: a set of label values), distances in mm using the
voxel spacing. Surfaces and distances follow MONAI's conventions (surface = mask minus its
1-connected erosion; Euclidean distance transform with ``sampling=spacing``; HD95 = the larger of
the two directed 95th percentiles; MSD = mean of all surface-to-surface distances, both ways;
NSD = normalised surface Dice, the fraction of both surfaces within ``nsd_tolerance`` mm of the
other, as MONAI's ``compute_surface_dice``).

Voxels outside ``valid`` (e.g. the dataset's ignore label) belong to neither mask.

Conventions for empty masks: prediction and ground truth both empty → Dice = IoU = NSD = 1 and
distances 0; only one empty → Dice = IoU = NSD = 0 and distances NaN (left out of the means,
counted as ``undefined``).

Example:
    >>> gt = np.zeros((8, 8), np.uint8); gt[2:6, 2:6] = 1
    >>> case_metrics(gt, gt, spacing=(1.0, 1.0), labels=[1])[1]["dice"]
    1.0
    >>> case_metrics(pred, gt, spacing, labels={"whole tumor": [1, 2, 3]})["whole tumor"]["nsd"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from fusionseg.errors import InputError

__all__ = [
    "DEFAULT_NSD_TOLERANCE",
    "METRICS",
    "case_metrics",
    "class_dice",
    "dice_iou",
    "summarise",
    "surface_dice",
    "surface_distances",
]

METRICS = ("dice", "iou", "hd95", "msd", "nsd")
DEFAULT_NSD_TOLERANCE = 1.0  # mm


def dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks of the same shape (both empty → 1, 1)."""
    inter = np.count_nonzero(pred & gt)
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface → gt surface, gt surface → pred surface).

    Both masks must be non-empty. Work happens in the bounding box of the union (+1 voxel), which
    holds every surface voxel, so the distances are exact and large volumes stay cheap.
    """
    union = pred | gt
    box = tuple(slice(max(int(idx.min()) - 1, 0), int(idx.max()) + 2) for idx in np.nonzero(union))
    pred, gt = np.pad(pred[box], 1), np.pad(gt[box], 1)  # padding keeps a border voxel off the surface test
    surf_p, surf_g = _surface(pred), _surface(gt)
    sampling = [float(s) for s in spacing]
    dist_to_g = ndimage.distance_transform_edt(~surf_g, sampling=sampling)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=sampling)
    return dist_to_g[surf_p], dist_to_p[surf_g]


def surface_dice(d_pg: np.ndarray, d_gp: np.ndarray, tolerance: float) -> float:
    """Normalised surface Dice from the directed surface distances: the fraction of surface voxels of
    both masks within ``tolerance`` mm of the other surface (MONAI ``compute_surface_dice``)."""
    total = d_pg.size + d_gp.size
    return float((np.count_nonzero(d_pg <= tolerance) + np.count_nonzero(d_gp <= tolerance)) / total)


def class_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Dice of classes 1..num_classes-1 of two label maps in one pass (a confusion count) → (num_classes - 1,).

    Voxels outside ``valid`` are left out; a class absent from both maps scores 1.
    """
    pred, gt = np.asarray(pred).ravel(), np.asarray(gt).ravel()
    if valid is not None:
        keep = np.asarray(valid).ravel()
        pred, gt = pred[keep], gt[keep]
    k = int(num_classes)
    inside = (pred < k) & (gt < k)
    both = np.bincount(gt[inside & (pred == gt)].astype(np.int64), minlength=k)[:k]
    in_pred = np.bincount(pred[pred < k].astype(np.int64), minlength=k)[:k]
    in_gt = np.bincount(gt[gt < k].astype(np.int64), minlength=k)[:k]
    total = (in_pred + in_gt).astype(np.float64)
    dice = np.where(total > 0, 2.0 * both / np.maximum(total, 1), 1.0)
    return dice[1:]


def _score(p: np.ndarray, g: np.ndarray, spacing: Sequence[float], nsd_tolerance: float) -> dict[str, float]:
    dice, iou = dice_iou(p, g)
    has_p, has_g = bool(p.any()), bool(g.any())
    if has_p and has_g:
        d_pg, d_gp = surface_distances(p, g, spacing)
        hd95 = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
        msd = float(np.concatenate([d_pg, d_gp]).mean())
        nsd = surface_dice(d_pg, d_gp, nsd_tolerance)
    elif not has_p and not has_g:
        hd95 = msd = 0.0
        nsd = 1.0
    else:
        hd95 = msd = math.nan
        nsd = 0.0
    return {"dice": float(dice), "iou": float(iou), "hd95": hd95, "msd": msd, "nsd": nsd}


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int] | Mapping[str, Sequence[int]],
    *,
    valid: np.ndarray | None = None,
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE,
) -> dict[int | str, dict[str, float]]:
    """Metrics of one case: ``{label: {"dice", "iou", "hd95", "msd", "nsd"}}`` (distances in mm).

    Args:
        pred, gt: integer label maps of the same shape (*S).
        spacing: voxel size in mm per spatial axis (len == pred.ndim).
        labels: foreground labels to score, or regions ``{name: [label values]}`` (keys of the result).
        valid: boolean (*S), voxels to score (e.g. ``gt != ignore_label``); None = all.
        nsd_tolerance: surface distance in mm that NSD accepts.
    """
    if pred.shape != gt.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from ground truth {gt.shape}; predict on the same grid"
        )
    if len(spacing) != gt.ndim:
        raise InputError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {gt.ndim}-D label map")
    if not nsd_tolerance >= 0:
        raise InputError(f"the NSD tolerance must be ≥ 0 mm, got {nsd_tolerance}")
    if valid is not None and valid.shape != gt.shape:
        raise ValueError(f"valid mask shape {valid.shape} differs from the label maps {gt.shape}")
    if isinstance(labels, Mapping):
        out: dict[int | str, dict[str, float]] = {}
        for name, values in labels.items():
            p, g = np.isin(pred, list(values)), np.isin(gt, list(values))
            if valid is not None:
                p, g = p & valid, g & valid
            out[name] = _score(p, g, spacing, nsd_tolerance)
        return out
    # One pass per map for every label's bounding box; each label is then scored inside the union of its boxes.
    pred_boxes, gt_boxes = _boxes(pred, labels), _boxes(gt, labels)
    out = {}
    for label in labels:
        box = _union_box(pred_boxes[label], gt_boxes[label], gt.ndim)
        p, g = pred[box] == label, gt[box] == label
        if valid is not None:
            p, g = p & valid[box], g & valid[box]
        out[int(label)] = _score(p, g, spacing, nsd_tolerance)
    return out


def _boxes(label_map: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box (slices) of every label in ``labels`` (None when absent; the whole map for labels ≤ 0)."""
    top = max((int(v) for v in labels), default=0)
    found = ndimage.find_objects(np.clip(label_map, 0, top + 1).astype(np.int32), max_label=top) if top > 0 else []
    whole = tuple(slice(0, n) for n in label_map.shape)
    return {int(v): whole if int(v) <= 0 else found[int(v) - 1] for v in labels}


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, ndim: int) -> tuple[slice, ...]:
    if a is None:
        return b if b is not None else tuple(slice(0, 0) for _ in range(ndim))
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def summarise(rows: list[dict], labels: Sequence[int]) -> dict:
    """Mean / std / median per class and metric, plus the mean over classes (NaNs left out)."""
    per_class: dict[str, dict] = {}
    for label in labels:
        stats = {}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows if r["label"] == label], dtype=float)
            finite = values[np.isfinite(values)]
            stats[metric] = {
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std()) if finite.size else math.nan,
                "median": float(np.median(finite)) if finite.size else math.nan,
                "undefined": int(values.size - finite.size),
            }
        per_class[str(label)] = stats
    overall = {
        metric: float(np.nanmean([per_class[str(k)][metric]["mean"] for k in labels])) if labels else math.nan
        for metric in METRICS
    }
    return {"per_class": per_class, "mean": overall}
