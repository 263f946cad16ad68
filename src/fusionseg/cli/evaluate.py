"""``fusionseg evaluate``: Dice / IoU / HD95 / mean surface distance / NSD of predicted label maps.

Parsing only; the work is :func:`fusionseg.evaluation.run.run_evaluation`.
"""

from __future__ import annotations

import argparse

from fusionseg.cli.options import path
from fusionseg.errors import InputError

__all__ = ["build_parser", "main"]


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a distance in mm ≥ 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a distance in mm ≥ 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count ≥ 0, got {text!r}")
    return value


MAX_LABEL = 65535  # label maps are at most uint16; a larger value only makes scipy allocate per label


def foreground_labels(text: str | None) -> list[int] | None:
    """``--labels 1,2`` → [1, 2] (None when not given); InputError for anything but values 1..MAX_LABEL."""
    if not text:
        return None
    try:
        labels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--labels must be comma-separated integers, got {text!r}") from None
    if not all(1 <= label <= MAX_LABEL for label in labels):
        raise InputError(f"--labels are foreground values 1..{MAX_LABEL}, got {text!r}; e.g. --labels 1,2")
    return labels


def build_parser(prog: str = "fusionseg evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Dice / IoU / HD95 / mean surface distance / normalised surface Dice per case and class.",
    )
    p.add_argument("--pred", required=True, type=path, help="folder of predicted label maps")
    p.add_argument("--gt", required=True, type=path, help="folder of ground-truth label maps (same file names)")
    p.add_argument("--images", type=path, default=None, help="folder of images, for overlay PNGs of best/worst cases")
    p.add_argument("--output", type=path, default=None, help="where metrics.csv/summary.json go (default: --pred)")
    p.add_argument("--labels", default=None, help="comma-separated foreground labels (default: all in the gt)")
    p.add_argument(
        "--dataset-json", type=path, default=None, metavar="PATH",
        help="the dataset's dataset.json (or its folder): score its declared classes, or its regions, "
        "and leave out voxels with its ignore label",
    )  # fmt: skip
    p.add_argument(
        "--nsd-tolerance", type=_tolerance, default=1.0, metavar="MM",
        help="normalised surface Dice counts surface voxels within this distance in mm (default 1)",
    )  # fmt: skip
    p.add_argument("--num-overlays", type=_count, default=2, help="best and worst cases to draw (default 2 each)")
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg evaluate") -> int:
    from fusionseg.evaluation.run import EvaluationOptions, run_evaluation

    args = build_parser(prog).parse_args(argv)
    return run_evaluation(EvaluationOptions(**{**vars(args), "labels": foreground_labels(args.labels)}))
