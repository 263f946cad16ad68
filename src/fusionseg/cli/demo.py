"""``fusionseg demo``: phantoms → train a small DFF U-Net → predict → evaluate → report (no downloads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionseg.cli.options import add_runtime_options

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg demo") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, description="Train, predict and evaluate on synthetic phantoms."
    )
    p.add_argument("--output", type=Path, default=Path("fusionseg_demo"), help="folder (default ./fusionseg_demo)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of the same pipeline (seconds)")
    p.add_argument("--fusion", default="dff", help="fusion of the U-Net skips (default dff)")
    p.add_argument("--seed", type=int, default=0, help="phantom and training seed (default 0)")
    add_runtime_options(p, amp=False)
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg demo") -> int:
    from fusionseg.engine.demo import FULL, PASS_DICE, QUICK, run_demo
    from fusionseg.engine.runtime import set_threads

    args = build_parser(prog).parse_args(argv)
    threads, reason = set_threads(args.threads)
    print(
        f"fusionseg demo → {args.output} ({'quick' if args.quick else 'full'} run, {threads} CPU thread(s): {reason})"
    )
    result = run_demo(
        args.output, QUICK if args.quick else FULL, fusion=args.fusion, seed=args.seed, progress=args.progress,
        device=args.device,
    )  # fmt: skip
    print()
    print(result["table"])
    print(
        f"\nmean test Dice {result['mean_dice']:.4f} | train {result['train_s']:.0f} s, "
        f"predict {result['predict_s']:.1f} s, total {result['total_s']:.0f} s | report: {result['report']}"
    )
    if not args.quick and result["mean_dice"] < PASS_DICE:
        print(f"note: the mean Dice is below {PASS_DICE}; the machine may have been too busy for the time budget")
    return 0
