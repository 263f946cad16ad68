"""Segmentation metrics and ``fusionseg evaluate``.

Per case and per foreground class: Dice, IoU, HD95 and mean (symmetric) surface distance in mm,
using the voxel spacing. Surfaces and distances follow MONAI's conventions (surface = mask minus
its 1-connected erosion; Euclidean distance transform with ``sampling=spacing``; HD95 = the larger
of the two directed 95th percentiles; MSD = mean of all surface-to-surface distances, both ways).

Conventions for empty masks: prediction and ground truth both empty → Dice = IoU = 1 and
distances 0; only one empty → Dice = IoU = 0 and distances NaN (left out of the means, counted
in ``summary.json`` as ``undefined``).

Example:
    >>> gt = np.zeros((8, 8), np.uint8); gt[2:6, 2:6] = 1
    >>> case_metrics(gt, gt, spacing=(1.0, 1.0), labels=[1])[1]["dice"]
    1.0
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from fusionseg.data.formats import LABEL_EXTENSIONS
from fusionseg.data.formats import strip_extension as _case_id
from fusionseg.errors import InputError

__all__ = [
    "METRICS",
    "case_metrics",
    "dice_iou",
    "evaluate_folders",
    "main",
    "match_cases",
    "summarise",
    "surface_distances",
]

METRICS = ("dice", "iou", "hd95", "msd")


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


def case_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], labels: Sequence[int]
) -> dict[int, dict[str, float]]:
    """Metrics of one case: ``{label: {"dice", "iou", "hd95", "msd"}}`` (distances in mm).

    Args:
        pred, gt: integer label maps of the same shape (*S).
        spacing: voxel size in mm per spatial axis (len == pred.ndim).
        labels: foreground labels to score.
    """
    if pred.shape != gt.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from ground truth {gt.shape}; predict on the same grid"
        )
    if len(spacing) != gt.ndim:
        raise InputError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {gt.ndim}-D label map")
    # One pass per map for every label's bounding box; each label is then scored inside the union of its boxes.
    pred_boxes, gt_boxes = _boxes(pred, labels), _boxes(gt, labels)
    out = {}
    for label in labels:
        box = _union_box(pred_boxes[label], gt_boxes[label], gt.ndim)
        p, g = pred[box] == label, gt[box] == label
        dice, iou = dice_iou(p, g)
        has_p, has_g = bool(p.any()), bool(g.any())
        if has_p and has_g:
            d_pg, d_gp = surface_distances(p, g, spacing)
            hd95 = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
            msd = float(np.concatenate([d_pg, d_gp]).mean())
        elif not has_p and not has_g:
            hd95 = msd = 0.0
        else:
            hd95 = msd = math.nan
        out[int(label)] = {"dice": float(dice), "iou": float(iou), "hd95": hd95, "msd": msd}
    return out


def _boxes(label_map: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box (slices) of every label in ``labels`` (None when absent; the whole map for labels ≤ 0)."""
    top = max((int(v) for v in labels), default=0)
    found = ndimage.find_objects(np.clip(label_map, 0, top + 1).astype(np.int32), max_label=top) if top > 0 else []
    whole = tuple(slice(0, n) for n in label_map.shape)
    return {int(v): whole if int(v) <= 0 else found[int(v) - 1] for v in labels}


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, ndim: int) -> tuple[slice, ...]:
    if a is None and b is None:
        return tuple(slice(0, 0) for _ in range(ndim))
    if a is None or b is None:
        return a if b is None else b
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


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass a folder of label files")
    files = {
        _case_id(p): p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(LABEL_EXTENSIONS)
    }
    if not files:
        raise InputError(f"{folder} holds no label files ({', '.join(LABEL_EXTENSIONS)})")
    return files


def match_cases(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair prediction and ground-truth files by case id → (pairs, ids missing a prediction, extra predictions)."""
    preds, gts = _label_files(Path(pred_dir)), _label_files(Path(gt_dir))
    pairs = [(cid, preds[cid], gts[cid]) for cid in gts if cid in preds]
    missing = [cid for cid in gts if cid not in preds]
    extra = [cid for cid in preds if cid not in gts]
    if not pairs:
        raise InputError(
            f"no case id of {pred_dir} matches one in {gt_dir} (e.g. {next(iter(preds))!r} vs {next(iter(gts))!r}); "
            "name predictions like the ground-truth files"
        )
    return pairs, missing, extra


def _read_label(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    from fusionseg.data import read_label

    array, meta = read_label(path)
    array = np.asarray(array)
    spacing = meta.get("spacing") if isinstance(meta, dict) else getattr(meta, "spacing", None)
    if spacing is None:
        spacing = (1.0,) * array.ndim
    return array, tuple(float(s) for s in spacing)[: array.ndim]


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    labels: Sequence[int] | None = None,
) -> tuple[list[dict], dict]:
    """Score every prediction in ``pred_dir`` against ``gt_dir`` → (rows, summary).

    ``rows``: one dict per (case, class) with case, label, dice, iou, hd95, msd. A ground-truth case
    without a prediction is scored as an empty prediction and listed under ``summary["missing"]``.
    """
    pairs, missing, extra = match_cases(Path(pred_dir), Path(gt_dir))
    loaded = []
    for cid, pred_path, gt_path in pairs:
        gt, spacing = _read_label(gt_path)
        pred, _ = _read_label(pred_path)
        if pred.shape != gt.shape:
            raise InputError(
                f"{pred_path.name}: shape {pred.shape} differs from its ground truth {gt_path} {gt.shape}; "
                "predictions must be on the ground truth's grid"
            )
        loaded.append((cid, pred, gt, spacing))
    gt_dir = Path(gt_dir)
    gt_files = _label_files(gt_dir)
    for cid in missing:
        gt, spacing = _read_label(gt_files[cid])
        loaded.append((cid, np.zeros_like(gt), gt, spacing))
    if labels is None:
        found: set[int] = set()
        for _, _, gt, _ in loaded:
            found.update(int(v) for v in np.unique(gt))
        labels = sorted(v for v in found if v != 0)
    labels = [int(v) for v in labels]
    rows = []
    for cid, pred, gt, spacing in sorted(loaded, key=lambda item: item[0]):
        for label, values in case_metrics(pred, gt, spacing, labels).items():
            rows.append({"case": cid, "label": label, **values})
    summary = summarise(rows, labels)
    summary.update(num_cases=len(loaded), labels=labels, missing=missing, extra=extra)
    return rows, summary


def case_mean_dice(rows: list[dict]) -> dict[str, float]:
    """Mean Dice over classes per case."""
    by_case: dict[str, list[float]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r["dice"])
    return {cid: float(np.mean(v)) for cid, v in by_case.items()}


def write_metrics_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "label", *METRICS])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def format_summary_table(summary: dict) -> str:
    """Markdown table: one row per class plus the mean (mean ± std)."""
    from fusionseg.bench.common import format_table

    rows = []
    for label, stats in summary["per_class"].items():
        rows.append([label, *(_pm(stats[m]["mean"], stats[m]["std"]) for m in METRICS)])
    rows.append(["mean", *(f"{summary['mean'][m]:.4f}" for m in METRICS)])
    return format_table(["class", "Dice", "IoU", "HD95 (mm)", "MSD (mm)"], rows)


def _pm(mean: float, std: float) -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"


def run_evaluation(
    pred_dir: Path,
    gt_dir: Path,
    output: Path,
    images: Path | None = None,
    labels: Sequence[int] | None = None,
    num_overlays: int = 2,
) -> dict:
    """Evaluate, write ``metrics.csv``, ``summary.json`` and overlays; return the summary."""
    rows, summary = evaluate_folders(pred_dir, gt_dir, labels)
    output.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(rows, output / "metrics.csv")
    summary["overlays"] = []
    if images is not None and num_overlays > 0:
        from fusionseg.engine.report import best_and_worst_overlays

        paths = best_and_worst_overlays(
            case_mean_dice(rows), Path(images), Path(pred_dir), Path(gt_dir), output, k=num_overlays
        )
        summary["overlays"] = [str(p.relative_to(output)) for p in paths]
    (output / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    return summary


def main(argv: list[str] | None = None, prog: str = "fusionseg evaluate") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Dice / IoU / HD95 / mean surface distance per case and class."
    )
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps")
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth label maps (same file names)")
    parser.add_argument(
        "--images", type=Path, default=None, help="folder of images, for overlay PNGs of best/worst cases"
    )
    parser.add_argument("--output", type=Path, default=None, help="where metrics.csv/summary.json go (default: --pred)")
    parser.add_argument("--labels", default=None, help="comma-separated foreground labels (default: all in the gt)")
    parser.add_argument("--num-overlays", type=int, default=2, help="best and worst cases to draw (default 2 each)")
    args = parser.parse_args(argv)
    labels = None
    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--labels must be comma-separated integers, got {args.labels!r}") from None
    output = args.output or args.pred
    summary = run_evaluation(args.pred, args.gt, output, args.images, labels, args.num_overlays)
    print(format_summary_table(summary))
    if summary["missing"]:
        print(f"warning: {len(summary['missing'])} case(s) without a prediction scored as empty: {summary['missing']}")
    print(f"wrote {output / 'metrics.csv'} and {output / 'summary.json'}")
    return 0
