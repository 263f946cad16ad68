"""``fusionseg relabel``: renumber a dataset's label values to 0..K-1 (mapping kept in dataset.json).

Parsing only; the work is :func:`fusionseg.data.run.run_relabel`.
"""

from __future__ import annotations

import argparse

from fusionseg.cli.options import path

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg relabel") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Map the label values of an nnU-Net dataset (dataset.json, labelsTr/, labelsTs/) to 0..K-1 in "
        "increasing order; dataset.json keeps the mapping, and predictions of a model trained on the result are "
        "written in the original values.",
    )
    p.add_argument("--data", required=True, type=path, help="dataset folder (nnU-Net layout, with dataset.json)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", type=path, default=None, help="new dataset folder to write (must not exist)")
    where.add_argument(
        "--in-place", action="store_true", help="rewrite the dataset's label files and dataset.json themselves"
    )
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg relabel") -> int:
    from fusionseg.data.run import run_relabel

    args = build_parser(prog).parse_args(argv)
    return run_relabel(**vars(args))
