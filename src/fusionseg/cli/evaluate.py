"""``fusionseg evaluate``: Dice / IoU / HD95 / mean surface distance of predicted label maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionseg.errors import InputError

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Dice / IoU / HD95 / mean surface distance per case and class.")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps")
    p.add_argument("--gt", required=True, type=Path, help="folder of ground-truth label maps (same file names)")
    p.add_argument("--images", type=Path, default=None, help="folder of images, for overlay PNGs of best/worst cases")
    p.add_argument("--output", type=Path, default=None, help="where metrics.csv/summary.json go (default: --pred)")
    p.add_argument("--labels", default=None, help="comma-separated foreground labels (default: all in the gt)")
    p.add_argument("--num-overlays", type=int, default=2, help="best and worst cases to draw (default 2 each)")
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg evaluate") -> int:
    from fusionseg.engine.evaluate import format_summary_table, run_evaluation

    args = build_parser(prog).parse_args(argv)
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
