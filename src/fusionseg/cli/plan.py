"""``fusionseg plan`` (and the parser of ``fusionseg preprocess``): plan a dataset once, preprocess it to the cache.

Parsing only; the work is :func:`fusionseg.data.run.run_plan` (:func:`~fusionseg.data.run.run_preprocess`).
"""

from __future__ import annotations

import argparse

from fusionseg.cli.options import SizesAction, floats, path, positive_int, sizes

__all__ = ["add_plan_options", "build_parser", "main"]


def _spacing(text: str) -> tuple[float, ...] | str:
    lowered = str(text).lower()
    if lowered in ("median", "keep"):
        return lowered
    values = floats(text)
    if not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected spacings in mm > 0 like 1,1,3 (or median, keep), got {text!r}")
    return values


def add_plan_options(p: argparse.ArgumentParser) -> None:
    """``--target-spacing``, ``--patch-size`` (overrides of the plan; also in ``fusionseg train``)."""
    p.add_argument(
        "--patch-size", type=sizes, action=SizesAction, default=None, help="training patch, e.g. 96,96 or 64,64,64"
    )
    p.add_argument(
        "--target-spacing",
        type=_spacing,
        default=None,
        help="resample to this spacing in mm (e.g. 1,1,3), median, or keep (each image's own grid); "
        "default: nnU-Net's rule (median; 10th percentile on a strongly anisotropic axis)",
    )


def build_parser(prog: str = "fusionseg plan", preprocess: bool = False) -> argparse.ArgumentParser:
    if preprocess:
        what = "Preprocess a dataset to the cache (plan, crop, resample, normalise; resumable)."
    else:
        what = "Plan a dataset: fingerprint, target spacing, patch and batch size, normalisation; writes plans.json."
    p = argparse.ArgumentParser(prog=prog, description=what)
    p.add_argument("--data", required=True, type=path, help="dataset folder (nnU-Net/MSD layout or images/ + masks/)")
    p.add_argument(
        "--cache",
        type=path,
        default=None,
        help="cache root for preprocessed data (default $FUSIONSEG_CACHE or ~/.cache/fusionseg/preprocessed)",
    )
    add_plan_options(p)
    p.add_argument("--batch-size", type=positive_int, default=2, help="patches per iteration (default 2)")
    if preprocess:
        p.add_argument("--workers", type=int, default=0, help="preprocessing processes (default 0: this one)")
        p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg plan") -> int:
    from fusionseg.data.run import run_plan

    args = build_parser(prog).parse_args(argv)
    return run_plan(**vars(args))
