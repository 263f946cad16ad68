"""Scoring folders of predicted label maps against ground truth (what ``fusionseg evaluate`` runs).

Pairs files by case id, checks that each prediction lies on its ground truth's grid (shape,
spacing, origin and direction), scores every case and foreground class — or region — with
:mod:`fusionseg.evaluation.metrics` (Dice, IoU, HD95, mean surface distance in mm, normalised surface
Dice at a tolerance in mm), and writes ``metrics.csv``, ``summary.json`` and overlay PNGs of the
best and worst cases.

Given the dataset's ``dataset.json`` (:func:`read_label_layout`), the declared classes are scored
(also those absent from the ground truth), a region dataset is scored per region (label maps →
``isin(label, region)``), and voxels with the ignore label are left out of every metric. Class
names come from that dataset.json, else from one found beside the ground truth
(:func:`find_dataset_json`: in ``GT/``, ``GT/..`` or ``GT/../..``), into ``metrics.csv``
(``name``), ``summary.json`` (``label_names``), the printed table and the overlays' legend.

Example:
    >>> rows, summary = evaluate_folders("preds", "Dataset001/labelsTs", layout=read_label_layout("Dataset001"))
    >>> summary["mean"]["dice"], summary["mean"]["nsd"]
    (0.91, 0.88)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fusionseg.data.formats import LABEL_EXTENSIONS
from fusionseg.data.formats import strip_extension as _case_id
from fusionseg.data.json_input import read_json_file
from fusionseg.data.labels import LabelLayout
from fusionseg.errors import InputError
from fusionseg.evaluation.metrics import DEFAULT_NSD_TOLERANCE, METRICS, case_metrics, summarise
from fusionseg.files import ensure_writable_dir, write_csv_atomic, write_text_atomic

__all__ = [
    "case_mean_dice",
    "check_same_grid",
    "evaluate_folders",
    "evaluate_pairs",
    "find_dataset_json",
    "format_summary_table",
    "json_safe",
    "label_files",
    "label_names",
    "match_cases",
    "read_label_layout",
    "write_evaluation",
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


def read_label_layout(path: str | Path) -> LabelLayout:
    """The labels of a dataset: its ``dataset.json`` (the file, or the dataset folder holding it)."""
    path = Path(path)
    json_path = path / "dataset.json" if path.is_dir() else path
    if not json_path.is_file():
        raise InputError(f"--dataset-json: {json_path} does not exist; pass the dataset's dataset.json or its folder")
    meta = read_json_file(json_path, "fix the JSON syntax")
    if not isinstance(meta, dict) or "labels" not in meta:
        raise InputError(f'{json_path}: no "labels" entry; pass the dataset.json of an nnU-Net dataset')
    return LabelLayout.from_dataset_json(meta["labels"], meta.get("regions_class_order"), json_path)


def find_dataset_json(gt_dir: str | Path) -> Path | None:
    """The dataset.json of a ground-truth folder: in ``GT/``, ``GT/..`` (nnU-Net's ``labelsTs/``) or
    ``GT/../..`` (the 2D layout's ``test/masks/``), the nearest first; None when there is none."""
    gt_dir = Path(gt_dir).absolute()
    for folder in (gt_dir, gt_dir.parent, gt_dir.parent.parent):
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    return None


def label_names(layout: LabelLayout | None) -> dict[str, str]:
    """{scored label (as summary keys: "1", or the region name): class name} of ``layout``."""
    if layout is None:
        return {}
    if layout.has_regions:
        return {name: name for name in layout.output_names}
    return {str(k): name for k, name in layout.names.items() if k != 0}


def _names_beside(gt_dir: Path) -> LabelLayout | None:
    """The label layout of a dataset.json found beside ``gt_dir`` (None when none is, or it does not parse)."""
    found = find_dataset_json(gt_dir)
    if found is None:
        return None
    try:
        return read_label_layout(found)
    except InputError:
        return None


def _read_label(path: Path) -> tuple[np.ndarray, dict]:
    from fusionseg.data import read_label

    array, meta = read_label(path)
    return np.asarray(array), meta


def _spacing(meta: dict, ndim: int) -> tuple[float, ...]:
    spacing = meta.get("spacing") or (1.0,) * ndim
    return tuple(float(s) for s in spacing)[:ndim]


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def check_same_grid(pred_meta: dict, gt_meta: dict, pred_path: Path, gt_path: Path) -> None:
    """InputError naming both files unless the prediction has its ground truth's shape, spacing, origin, direction."""
    shape_p, shape_g = tuple(pred_meta["spatial_shape"]), tuple(gt_meta["spatial_shape"])
    what = None
    if shape_p != shape_g:
        what = f"shape {shape_p} vs {shape_g}"
    else:
        a, b = np.asarray(pred_meta["affine"], float), np.asarray(gt_meta["affine"], float)
        n = a.shape[0] - 1
        if a.shape != b.shape:
            what = f"{n}-D vs {b.shape[0] - 1}-D geometry"
        else:
            spacing_p, spacing_g = np.linalg.norm(a[:n, :n], axis=0), np.linalg.norm(b[:n, :n], axis=0)
            tol = 1e-3 * max(1.0, float(spacing_g.max()))  # as data.validation.check_geometry
            if not np.allclose(spacing_p, spacing_g, rtol=1e-4, atol=1e-6):
                what = f"spacing {_fmt(spacing_p)} vs {_fmt(spacing_g)} mm"
            elif not np.allclose(a[:n, n], b[:n, n], rtol=1e-4, atol=tol):
                what = f"origin {_fmt(a[:n, n])} vs {_fmt(b[:n, n])} mm"
            elif not np.allclose(a[:n, :n] / spacing_p, b[:n, :n] / spacing_g, atol=1e-4):
                what = "direction (axis orientation) differs"
    if what is not None:
        raise InputError(
            f"prediction {pred_path} and ground truth {gt_path} are on different grids ({what}); "
            "predict on the ground truth's grid (fusionseg predict keeps the input's geometry)"
        )


def _scored(layout: LabelLayout | None, labels: Sequence[int] | None) -> Sequence[int] | Mapping | None:
    """What to score: regions {name: values}, the declared classes, or ``labels`` (None: found in the gt)."""
    if layout is not None and layout.regions is not None:
        if labels is not None:
            raise InputError("--labels cannot select regions; a region dataset is scored on all its regions")
        return dict(zip(layout.output_names, (list(r) for r in layout.regions)))
    if labels is not None:
        return [int(v) for v in labels]
    if layout is not None:
        return list(range(1, layout.num_classes))
    return None


def evaluate_pairs(
    pairs: Sequence[tuple[str, Path, Path]],
    labels: Sequence[int] | None = None,
    *,
    layout: LabelLayout | None = None,
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE,
    missing: Sequence[tuple[str, Path]] = (),
    names: LabelLayout | None = None,
) -> tuple[list[dict], dict]:
    """Score (case id, prediction file, ground-truth file) triples → (rows, summary).

    ``rows``: one dict per (case, class or region) with case, label, name and every metric of
    :data:`~fusionseg.evaluation.metrics.METRICS`. ``missing`` (case id, ground truth) are scored as
    empty predictions. ``layout`` (from ``dataset.json``) sets the classes or regions and the ignore label;
    ``names`` (default ``layout``) only names the classes.
    """
    if not nsd_tolerance >= 0:
        raise InputError(f"--nsd-tolerance must be ≥ 0 mm, got {nsd_tolerance}")
    loaded = []
    for cid, pred_path, gt_path in pairs:
        gt, gt_meta = _read_label(gt_path)
        pred, pred_meta = _read_label(pred_path)
        check_same_grid(pred_meta, gt_meta, pred_path, gt_path)
        loaded.append((cid, pred.reshape(gt.shape), gt, _spacing(gt_meta, gt.ndim)))
    for cid, gt_path in missing:
        gt, gt_meta = _read_label(gt_path)
        loaded.append((cid, np.zeros_like(gt), gt, _spacing(gt_meta, gt.ndim)))
    scored = _scored(layout, labels)
    if scored is None:
        found: set[int] = set()
        for _, _, gt, _ in loaded:
            found.update(int(v) for v in np.unique(gt))
        scored = sorted(v for v in found if v != 0)
    ignore = layout.ignore_label if layout is not None else None
    rows = []
    named = label_names(layout if layout is not None else names)
    for cid, pred, gt, spacing in sorted(loaded, key=lambda item: item[0]):
        valid = gt != ignore if ignore is not None else None
        metrics = case_metrics(pred, gt, spacing, scored, valid=valid, nsd_tolerance=nsd_tolerance)
        for label, values in metrics.items():
            rows.append({"case": cid, "label": label, "name": named.get(str(label), ""), **values})
    keys = list(scored)
    summary = summarise(rows, keys)
    summary.update(
        num_cases=len(loaded),
        labels=keys,
        regions=dict(scored) if isinstance(scored, Mapping) else None,
        label_names={str(k): named[str(k)] for k in keys if str(k) in named},
        ignore_label=ignore,
        nsd_tolerance_mm=float(nsd_tolerance),
    )
    return rows, summary


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    labels: Sequence[int] | None = None,
    *,
    layout: LabelLayout | None = None,
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE,
    names: LabelLayout | None = None,
) -> tuple[list[dict], dict]:
    """Score every prediction in ``pred_dir`` against ``gt_dir`` → (rows, summary) (see :func:`evaluate_pairs`).

    A ground-truth case without a prediction is scored as an empty prediction and listed under
    ``summary["missing"]``; predictions without ground truth under ``summary["extra"]``.
    """
    pairs, missing, extra = match_cases(Path(pred_dir), Path(gt_dir))
    gt_files = label_files(Path(gt_dir))
    rows, summary = evaluate_pairs(
        pairs,
        labels,
        layout=layout,
        nsd_tolerance=nsd_tolerance,
        missing=[(cid, gt_files[cid]) for cid in missing],
        names=names,
    )
    summary.update(missing=missing, extra=extra)
    return rows, summary


def case_mean_dice(rows: list[dict]) -> dict[str, float]:
    """Mean Dice over classes per case."""
    by_case: dict[str, list[float]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r["dice"])
    return {cid: float(np.mean(v)) for cid, v in by_case.items()}


def write_metrics_csv(rows: list[dict], path: Path) -> Path:
    """One row per (case, class) with every metric (atomic write)."""
    formatted = ({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    return write_csv_atomic(path, formatted, ["case", "label", "name", *METRICS])


def json_safe(obj):
    """``obj`` with NaN/Inf floats as None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def format_summary_table(summary: dict) -> str:
    """Markdown table: one row per class (or region) plus the mean (mean ± std)."""
    from fusionseg.evaluation.report import format_table

    rows = []
    names = summary.get("label_names") or {}
    for label, stats in summary["per_class"].items():
        rows.append([names.get(label, label), *(_pm(stats[m]["mean"], stats[m]["std"]) for m in METRICS)])
    rows.append(["mean", *(f"{summary['mean'][m]:.4f}" for m in METRICS)])
    tolerance = summary.get("nsd_tolerance_mm", DEFAULT_NSD_TOLERANCE)
    kind = "region" if summary.get("regions") else "class"
    return format_table([kind, "Dice", "IoU", "HD95 (mm)", "MSD (mm)", f"NSD ({tolerance:g} mm)"], rows)


def _pm(mean: float, std: float) -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"


def write_evaluation(
    pred_dir: Path,
    gt_dir: Path,
    output: Path,
    images: Path | None = None,
    labels: Sequence[int] | None = None,
    num_overlays: int = 2,
    *,
    layout: LabelLayout | None = None,
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE,
) -> dict:
    """Evaluate, write ``metrics.csv``, ``summary.json`` and overlays; return the summary.

    Without ``layout``, a dataset.json beside ``gt_dir`` (:func:`find_dataset_json`) names the classes.
    """
    names = layout if layout is not None else _names_beside(Path(gt_dir))
    rows, summary = evaluate_folders(pred_dir, gt_dir, labels, layout=layout, nsd_tolerance=nsd_tolerance, names=names)
    ensure_writable_dir(output, "--output")
    write_metrics_csv(rows, output / "metrics.csv")
    summary["overlays"] = []
    if images is not None and num_overlays > 0:
        from fusionseg.evaluation.report import best_and_worst_overlays
        from fusionseg.inference.inputs import find_inputs

        image_files = {cid: paths[0] for cid, paths in find_inputs(Path(images), in_channels=1)}
        paths = best_and_worst_overlays(
            case_mean_dice(rows), image_files, label_files(Path(pred_dir)), label_files(Path(gt_dir)), output,
            k=num_overlays, names=None if names is None or names.has_regions else dict(names.names),
        )  # fmt: skip
        summary["overlays"] = [str(p.relative_to(output)) for p in paths]
    write_text_atomic(output / "summary.json", json.dumps(json_safe(summary), indent=2))
    return summary
