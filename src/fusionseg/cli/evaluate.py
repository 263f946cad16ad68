"""``fusionseg evaluate``: Dice / IoU / HD95 / mean surface distance / NSD of predicted label maps."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

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


def check_folders(pred: Path, gt: Path, output: Path) -> None:
    """:class:`InputError` when ``pred`` is ``gt`` (a perfect score of nothing) or ``output`` lies in ``gt``."""
    if not Path(gt).is_dir() or Path(output).is_file():
        return  # run_evaluation names the missing folder or the file in the way
    real_gt = Path(os.path.realpath(gt))
    if Path(os.path.realpath(pred)) == real_gt:
        raise InputError(
            f"--pred {pred} is --gt {gt}: that scores the ground truth against itself; pass the predictions folder"
        )
    real_out = Path(os.path.realpath(output))
    if real_out == real_gt or real_gt in real_out.parents:
        raise InputError(
            f"--output {output} lies inside --gt {gt}; the ground truth is only read: pass another --output"
        )


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
    from fusionseg.evaluation.evaluate import format_summary_table, read_label_layout, run_evaluation

    args = build_parser(prog).parse_args(argv)
    labels = None
    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--labels must be comma-separated integers, got {args.labels!r}") from None
        if not all(1 <= label <= MAX_LABEL for label in labels):
            raise InputError(f"--labels are foreground values 1..{MAX_LABEL}, got {args.labels!r}; e.g. --labels 1,2")
    layout = read_label_layout(args.dataset_json) if args.dataset_json is not None else None
    output = args.output or args.pred
    check_folders(args.pred, args.gt, output)
    summary = run_evaluation(
        args.pred, args.gt, output, args.images, labels, args.num_overlays, layout=layout,
        nsd_tolerance=args.nsd_tolerance,
    )  # fmt: skip
    print(format_summary_table(summary))
    if summary["missing"]:
        print(f"warning: {len(summary['missing'])} case(s) without a prediction scored as empty: {summary['missing']}")
    print(f"wrote {output / 'metrics.csv'} and {output / 'summary.json'}")
    return 0
