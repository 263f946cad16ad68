"""Cross-validation: one training run per fold of nnU-Net's ``splits_final.json`` (``train --cross-validate``).

For every fold k the :class:`~fusionseg.training.trainer.Trainer` trains ``OUTPUT/fold_k`` (validation
cases = the fold's ``val`` list); then each fold's ``best.pt`` predicts its validation cases into
``OUTPUT/fold_k/validation/`` (label maps in each input's geometry, scored with ``metrics.csv`` /
``summary.json`` there). Over every fold folder present, the run writes atomically:

- ``crossval_summary.json``: Dice per fold (mean over the fold's validation cases and foreground
  classes / regions), its mean ± std over folds (population std), the pooled per-class Dice;
- ``postprocessing.json``: the largest-component postprocessing chosen on all validation
  predictions (:mod:`fusionseg.inference.postprocess`), applied by ``fusionseg predict --checkpoint OUTPUT``.

With ``resume`` an interrupted cross-validation continues where it stopped: every fold resumes from its
newest checkpoint (a finished fold trains no further, a fold without one starts afresh) and validation
cases already predicted with the same checkpoint are not predicted again. Folds may also be trained in
separate invocations (``folds=[0, 1]`` then ``[2, 3, 4]``): the summary covers every fold folder it finds.

Example:
    >>> summary = run_cross_validation(TrainConfig(data=Path("Dataset004"), output=Path("runs/cv"), epochs=50))
    >>> summary["dice_mean"], summary["dice_std"]
    (0.89, 0.01)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

from fusionseg.errors import InputError
from fusionseg.files import write_text_atomic
from fusionseg.training.config import TrainConfig

__all__ = ["CROSSVAL_SUMMARY", "format_crossval", "parse_folds", "run_cross_validation", "summarise_cross_validation"]

CROSSVAL_SUMMARY = "crossval_summary.json"
VALIDATION_FOLDER = "validation"


def parse_folds(text: str | Sequence[int]) -> list[int] | str:
    """``"all"`` or ``"0,1,3"`` (or a list of ints) → ``"all"`` or sorted unique fold numbers."""
    if isinstance(text, str):
        if text.strip().lower() == "all":
            return "all"
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise InputError(f"--cross-validate must be 'all' or fold numbers like 0,1,2, got {text!r}")
        return sorted({int(p) for p in parts})
    return sorted({int(k) for k in text})


class TrainingRun(Protocol):
    """What cross-validation needs of a trainer: ``run()`` trains and returns the best checkpoint's path."""

    def run(self) -> str | os.PathLike: ...


def _fold_dir(output: Path, fold: int) -> Path:
    return output / f"fold_{fold}"


def _predict_validation(best: Path, val_cases: list, folder: Path, config: TrainConfig, log: Callable) -> None:
    """Label maps of the fold's validation cases with its best checkpoint, in each input's geometry."""
    from fusionseg.checkpoints.loading import load_model
    from fusionseg.inference.predict_files import predict_files
    from fusionseg.runtime.devices import pick_device
    from fusionseg.runtime.precision import choose_inference_amp

    device = pick_device(config.device)
    model, pre, _ = load_model(best, device)
    amp_dtype = choose_inference_amp(model, pre, device, config.amp, log=log)
    cases = [(case.case_id, list(case.images)) for case in val_cases]
    _, failed = predict_files(  # scored against the dataset's own (relabelled) values
        model, pre, cases, folder, device=device, amp_dtype=amp_dtype, progress=False, original_labels=False
    )
    if failed:
        cid, message = failed[0]
        raise InputError(f"validation prediction of case {cid!r} failed ({message}); fix the case and rerun")
    log(f"predicted {len(cases)} validation case(s) into {folder}")


def run_cross_validation(
    config: TrainConfig,
    folds: Sequence[int] | str = "all",
    *,
    trainer: Callable[..., TrainingRun] | None = None,
    log: Callable[..., None] = print,
) -> dict:
    """Train ``folds`` (``"all"`` = every fold of the splits) into ``config.output/fold_k``, predict and score
    their validation cases, then summarise every fold folder present (module docstring) → the summary
    (an empty dict on ranks other than 0 under torchrun).

    ``trainer``: the class (or factory ``trainer(config, log=...)`` with ``.run()``) to train with;
    default :class:`~fusionseg.training.trainer.Trainer`.
    """
    from fusionseg import data
    from fusionseg.training.trainer import Trainer

    config.check()
    trainer = trainer or Trainer
    output = Path(config.output)
    info = data.scan_dataset(config.data)
    splits = data.load_or_create_splits(info, config.splits, config.num_folds)
    parsed = parse_folds(folds)
    chosen = list(range(len(splits))) if isinstance(parsed, str) else parsed  # a str is "all"
    bad = [k for k in chosen if not 0 <= k < len(splits)]
    if bad:
        raise InputError(f"--cross-validate: fold(s) {bad} do not exist; the splits have folds 0..{len(splits) - 1}")
    is_main = os.environ.get("RANK", "0") == "0"
    best = {}
    for i, k in enumerate(chosen, 1):
        fold_dir = _fold_dir(output, k)
        if is_main:
            log(f"== fold {k} ({i} of {len(chosen)}) → {fold_dir}")
        best[k] = Path(trainer(replace(config, fold=k, output=fold_dir), log=log).run())
    if not is_main:
        return {}
    # After all training, so that under torchrun the other ranks never wait for rank 0's predictions.
    by_id = {case.case_id: case for case in info.cases}
    for k in chosen:
        val_cases = [by_id[c] for c in splits[k]["val"]]
        _predict_validation(best[k], val_cases, _fold_dir(output, k) / VALIDATION_FOLDER, config, log)
    return summarise_cross_validation(output, info, splits, log=log)


def summarise_cross_validation(output: Path, info, splits: list[dict], log: Callable[..., None] = print) -> dict:
    """Score each fold folder's validation predictions, choose the postprocessing, write the summary files."""
    from fusionseg.evaluation.evaluate import evaluate_pairs, json_safe, label_files, write_metrics_csv
    from fusionseg.inference.postprocess import POSTPROCESSING_FILE, determine_postprocessing, write_postprocessing

    layout = info.label_layout
    by_id = {case.case_id: case for case in info.cases}
    folds, all_pairs, all_rows = [], [], []
    for k, fold in enumerate(splits):
        folder = _fold_dir(output, k) / VALIDATION_FOLDER
        if not folder.is_dir():
            continue
        predictions = label_files(folder)
        missing = [cid for cid in fold["val"] if cid not in predictions]
        if missing:
            raise InputError(f"{folder} lacks the predictions of validation case(s) {missing[:3]}; rerun fold {k}")
        pairs = [(cid, predictions[cid], by_id[cid].label) for cid in fold["val"]]
        rows, summary = evaluate_pairs(pairs, layout=layout)
        write_metrics_csv(rows, folder / "metrics.csv")
        write_text_atomic(folder / "summary.json", json.dumps(json_safe(summary), indent=2))
        folds.append({"fold": k, "dice": summary["mean"]["dice"], "num_cases": len(pairs)})
        all_pairs += pairs
        all_rows += rows
    if not folds:
        raise InputError(
            f"{output} holds no fold_*/{VALIDATION_FOLDER}/ predictions; train with --cross-validate first"
        )
    dice = np.array([f["dice"] for f in folds], dtype=float)
    per_class: dict[str, list[float]] = {}
    for r in all_rows:
        name = r["label"] if layout.has_regions else layout.names[int(r["label"])]
        per_class.setdefault(str(name), []).append(r["dice"])
    plan = determine_postprocessing(all_pairs, layout)
    write_postprocessing(plan, output / POSTPROCESSING_FILE)
    summary = {
        "folds": folds,
        "num_folds": len(splits),
        "complete": len(folds) == len(splits),
        "dice_mean": float(dice.mean()),
        "dice_std": float(dice.std()),
        "per_class_dice": {name: float(np.mean(v)) for name, v in per_class.items()},
        "postprocessing": [e["name"] for e in plan["keep_largest_component"]],
        "postprocessing_file": POSTPROCESSING_FILE,
    }
    write_text_atomic(output / CROSSVAL_SUMMARY, json.dumps(json_safe(summary), indent=2) + "\n")
    log(format_crossval(summary))
    return summary


def format_crossval(summary: dict) -> str:
    """Two lines: ``cross-validation Dice m ± s over n folds`` and the per-fold values."""
    folds = summary["folds"]
    done = "" if summary["complete"] else f" ({len(folds)} of {summary['num_folds']} folds trained)"
    per_fold = ", ".join(f"fold {f['fold']}: {f['dice']:.4f}" for f in folds)
    kept = ", ".join(summary["postprocessing"]) or "none"
    return (
        f"cross-validation Dice {summary['dice_mean']:.4f} ± {summary['dice_std']:.4f} "
        f"over {len(folds)} fold(s){done}\n"
        f"  {per_fold}; largest-component postprocessing for: {kept}"
    )
