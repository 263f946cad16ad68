"""Largest-connected-component postprocessing, chosen on the cross-validation predictions as nnU-Net does.

For each foreground class (or region), :func:`determine_postprocessing` compares the validation
Dice of the cross-validation predictions with and without "keep only the largest connected
component of this class/region" (the removed voxels become background 0; components connect
through faces, edges and corners). Classes/regions where it does not lower the mean Dice over the
validation cases get it. The decision is a small JSON file (``postprocessing.json`` beside the
cross-validation folds)::

    {"keep_largest_component": [{"name": "liver", "values": [1]}, ...],
     "dice_before": {"liver": 0.91, ...}, "dice_after": {"liver": 0.93, ...}, "num_cases": 40}

and :func:`apply_postprocessing` applies it to a label map (``fusionseg predict --postprocess``).
Each class/region is decided on its own against the plain predictions (for regions, by the mean
Dice over all regions, since removing voxels of one region changes the nested ones).

Example:
    >>> plan = determine_postprocessing(pairs, layout)          # pairs: [(case_id, pred_path, gt_path)]
    >>> write_postprocessing(plan, "runs/cv/postprocessing.json")
    >>> cleaned = apply_postprocessing(label_map, read_postprocessing("runs/cv/postprocessing.json"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from fusionseg.data.labels import LabelLayout, labels_to_regions
from fusionseg.errors import InputError
from fusionseg.files import write_text_atomic

__all__ = [
    "POSTPROCESSING_FILE",
    "apply_postprocessing",
    "determine_postprocessing",
    "keep_largest_component",
    "postprocess_label_file",
    "read_postprocessing",
    "write_postprocessing",
]

POSTPROCESSING_FILE = "postprocessing.json"


def _removed_components(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` outside its largest connected component (full connectivity)."""
    removed = np.zeros_like(mask, dtype=bool)
    if not mask.any():
        return removed
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = mask[box]
    components, count = ndimage.label(sub, structure=ndimage.generate_binary_structure(sub.ndim, sub.ndim))
    if count <= 1:
        return removed
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    removed[box] = sub & (components != int(sizes.argmax()))
    return removed


def keep_largest_component(label_map: np.ndarray, values: Sequence[int], background: int = 0) -> np.ndarray:
    """``label_map`` with every connected component of ``isin(label_map, values)`` but the largest set to background."""
    removed = _removed_components(np.isin(label_map, list(values)))
    if not removed.any():
        return label_map
    out = np.array(label_map, copy=True)
    out[removed] = background
    return out


def apply_postprocessing(label_map: np.ndarray, plan: dict) -> np.ndarray:
    """Apply a plan of :func:`determine_postprocessing` to a label map (*S), in its order."""
    for entry in plan.get("keep_largest_component", []):
        label_map = keep_largest_component(label_map, entry["values"])
    return label_map


def postprocess_label_file(path: str | Path, plan: dict, binary_as_255: bool = False) -> Path:
    """Apply ``plan`` to the label map file ``path`` in place (same format and geometry)."""
    from fusionseg.data import read_label, write_label

    label_map, meta = read_label(path)
    cleaned = apply_postprocessing(label_map, plan)
    if cleaned is not label_map:
        write_label(cleaned, meta, path, binary_as_255=binary_as_255)
    return Path(path)


def _targets(layout: LabelLayout) -> list[tuple[str, tuple[int, ...]]]:
    if layout.regions is not None:
        return list(zip(layout.output_names, layout.regions))
    return [(layout.names[k], (k,)) for k in range(1, layout.num_classes)]


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(pred & gt) / total


def _case_scores(pred: np.ndarray, gt: np.ndarray, layout: LabelLayout) -> tuple[np.ndarray, np.ndarray]:
    """(Dice per target without postprocessing, score per target with only that target postprocessed).

    Classes: the class's own Dice. Regions: the mean Dice over all regions (nested regions change together).
    """
    valid = layout.valid_mask(gt)
    targets = _targets(layout)
    regions = layout.regions
    if regions is not None:
        gt_masks = labels_to_regions(gt, regions).astype(bool)
        if valid is not None:
            gt_masks &= valid

        def region_dices(label_map: np.ndarray) -> np.ndarray:
            masks = labels_to_regions(label_map, regions).astype(bool)
            if valid is not None:
                masks &= valid
            return np.array([_dice(p, g) for p, g in zip(masks, gt_masks)])

        before = region_dices(pred)
        after = np.array([region_dices(keep_largest_component(pred, values)).mean() for _, values in targets])
        return before, np.concatenate([[before.mean()], after])
    class_before: list[float] = []
    class_after: list[float] = []
    for _, (value,) in targets:
        p, g = pred == value, gt == value
        if valid is not None:
            p, g = p & valid, g & valid
        removed = _removed_components(pred == value) & (valid if valid is not None else True)
        class_before.append(_dice(p, g))
        class_after.append(_dice(p & ~removed, g) if removed.any() else class_before[-1])
    return np.array(class_before), np.array(class_after)


def determine_postprocessing(pairs: Sequence[tuple[str, Path, Path]], layout: LabelLayout) -> dict:
    """Choose, per foreground class/region, whether keeping its largest component helps (module docstring).

    ``pairs``: (case id, predicted label map, ground truth) of the cross-validation predictions.
    """
    from fusionseg.data import read_label

    if not pairs:
        raise InputError("no validation predictions to choose the postprocessing on; run the cross-validation first")
    targets = _targets(layout)
    before_sum = np.zeros(len(targets))
    after_sum = np.zeros(len(targets))
    region_base = 0.0
    for _, pred_path, gt_path in pairs:
        pred, _ = read_label(pred_path)
        gt, _ = read_label(gt_path)
        if pred.shape != gt.shape:
            raise InputError(f"{pred_path}: shape {pred.shape} differs from its ground truth {gt_path} {gt.shape}")
        before, after = _case_scores(pred, gt, layout)
        before_sum += before
        if layout.has_regions:
            region_base += after[0]
            after_sum += after[1:]
        else:
            after_sum += after
    n = len(pairs)
    before_mean, after_mean = before_sum / n, after_sum / n
    # Regions compare the mean over all regions; classes their own Dice (the others do not change).
    baseline = np.full(len(targets), region_base / n) if layout.has_regions else before_mean
    chosen = [
        {"name": name, "values": [int(v) for v in values]}
        for (name, values), base, post in zip(targets, baseline, after_mean)
        if post >= base
    ]
    return {
        "keep_largest_component": chosen,
        "dice_before": {name: float(v) for (name, _), v in zip(targets, before_mean)},
        "dice_after": {name: float(v) for (name, _), v in zip(targets, after_mean)},
        "criterion": "mean Dice over regions" if layout.has_regions else "Dice of the class",
        "num_cases": n,
    }


def write_postprocessing(plan: dict, path: str | Path) -> Path:
    """Write ``plan`` as JSON, atomically."""
    return write_text_atomic(Path(path), json.dumps(plan, indent=2) + "\n")


def read_postprocessing(path: str | Path) -> dict:
    """Read and check a postprocessing JSON (from :func:`write_postprocessing`)."""
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"--postprocess: {path} does not exist; pass the postprocessing.json of a cross-validation run"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(
            f"--postprocess: cannot read {path} ({' '.join(str(exc).split())[:160]}); fix or delete it"
        ) from None
    entries = plan.get("keep_largest_component") if isinstance(plan, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("values"), list) and all(isinstance(v, int) for v in e["values"])
        for e in entries
    ):
        raise InputError(
            f'--postprocess: {path} lacks "keep_largest_component": [{{"name", "values": [labels]}}, ...]; '
            "use the postprocessing.json written by `fusionseg train --cross-validate`"
        )
    return plan
