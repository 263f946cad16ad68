"""``fusionseg plan`` and ``fusionseg preprocess``: plan a dataset once, preprocess it to the cache."""

from __future__ import annotations

import argparse

from fusionseg.cli.options import SizesAction, floats, path, positive_int, sizes

__all__ = ["build_parser", "main", "preprocess_main"]


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


def _plan(args: argparse.Namespace):
    from fusionseg.data import scan_dataset
    from fusionseg.data.plan import plan_dataset

    info = scan_dataset(args.data)
    if info.mask_rule:
        print(f"note: masks ({info.layout}): {info.mask_rule}")
    workers = getattr(args, "workers", 0)
    plan = plan_dataset(info, args.target_spacing, args.patch_size, args.batch_size, cache=args.cache, workers=workers)
    return info, plan


def main(argv: list[str] | None = None, prog: str = "fusionseg plan") -> int:
    from fusionseg.data.plan import PLAN_FILE, format_plan, save_plan
    from fusionseg.data.preprocess import cache_folder
    from fusionseg.files import ensure_writable_dir

    args = build_parser(prog).parse_args(argv)
    _, plan = _plan(args)
    print(format_plan(plan))
    path = save_plan(plan, ensure_writable_dir(cache_folder(plan, args.cache), "cache folder") / PLAN_FILE)
    print(f"wrote {path}")
    return 0


def preprocess_main(argv: list[str] | None = None, prog: str = "fusionseg preprocess") -> int:
    from fusionseg.data.plan import format_plan
    from fusionseg.data.preprocess import preprocess_dataset

    args = build_parser(prog, preprocess=True).parse_args(argv)
    if args.workers < 0:
        from fusionseg.errors import InputError

        raise InputError(f"--workers must be ≥ 0, got {args.workers}")
    info, plan = _plan(args)  # the voxel statistics are read by the workers too
    print(format_plan(plan))
    report = preprocess_dataset(info, plan, args.cache, args.workers, args.progress)
    return 1 if report.failed else 0
