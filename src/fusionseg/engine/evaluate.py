"""Scoring folders of predicted label maps against ground truth (``fusionseg evaluate``).

Pairs files by case id, scores every case and foreground class with :mod:`fusionseg.engine.metrics`
(Dice, IoU, HD95, mean surface distance in mm), and writes ``metrics.csv``, ``summary.json`` and
overlay PNGs of the best and worst cases.

Example:
    >>> rows, summary = evaluate_folders("preds", "Dataset001/labelsTs")
    >>> summary["mean"]["dice"]
    0.91
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionseg.data.formats import LABEL_EXTENSIONS
from fusionseg.data.formats import strip_extension as _case_id
from fusionseg.engine.metrics import METRICS, case_metrics, summarise
from fusionseg.errors import InputError
from fusionseg.files import atomic_write, write_text_atomic

__all__ = [
    "case_mean_dice",
    "evaluate_folders",
    "format_summary_table",
    "label_files",
    "match_cases",
    "run_evaluation",
    "write_metrics_csv",
]


def label_files(folder: Path) -> dict[str, Path]:
    """Label files of ``folder`` by case id; InputError when it is not a folder or holds none."""
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
    preds, gts = label_files(Path(pred_dir)), label_files(Path(gt_dir))
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
    gt_files = label_files(gt_dir)
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
    """One row per (case, class) with every metric (atomic write)."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
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
    from fusionseg.engine.report import format_table

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
        from fusionseg.engine.infer import find_inputs
        from fusionseg.engine.report import best_and_worst_overlays

        image_files = {cid: paths[0] for cid, paths in find_inputs(Path(images), in_channels=1)}
        paths = best_and_worst_overlays(
            case_mean_dice(rows), image_files, label_files(Path(pred_dir)), label_files(Path(gt_dir)), output,
            k=num_overlays,
        )  # fmt: skip
        summary["overlays"] = [str(p.relative_to(output)) for p in paths]
    write_text_atomic(output / "summary.json", json.dumps(_json_safe(summary), indent=2))
    return summary
