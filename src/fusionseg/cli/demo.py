"""``fusionseg demo``: the shipped real nuclei image (or ``--phantoms``) → train a small DFF U-Net → predict →
evaluate → report (no downloads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionseg.cli.options import add_runtime_options, path

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg demo") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Train, predict and evaluate on the real nuclei image shipped with fusionseg "
        "(12 training tiles, 4 test tiles), or on synthetic phantoms.",
    )
    p.add_argument("--output", type=path, default=Path("fusionseg_demo"), help="folder (default ./fusionseg_demo)")
    p.add_argument("--phantoms", action="store_true", help="synthetic phantoms instead of the real nuclei image")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of the same pipeline (seconds)")
    p.add_argument("--fusion", default="dff", help="fusion of the U-Net skips (default dff)")
    p.add_argument("--seed", type=int, default=0, help="data (phantoms) and training seed (default 0)")
    add_runtime_options(p, amp=False)
    return p


DEMO_ENTRIES = {"data", "run", "predictions", "evaluation", "report.md", ".fusionseg-lock"}


def check_demo_folder(output: Path) -> None:
    """:class:`InputError` when ``output`` holds files an earlier demo did not write (the demo replaces its own)."""
    from fusionseg.errors import InputError

    if not output.is_dir():
        return
    foreign = sorted(p.name for p in output.iterdir() if p.name not in DEMO_ENTRIES)
    report = output / "report.md"
    if not foreign and report.is_file():
        try:
            foreign = [] if "fusionseg demo" in report.read_text(errors="replace") else ["report.md"]
        except OSError:
            foreign = ["report.md"]
    if foreign:
        raise InputError(
            f"--output {output} already holds files the demo did not write ({', '.join(foreign[:3])}); "
            "pass a new or empty folder"
        )


def main(argv: list[str] | None = None, prog: str = "fusionseg demo") -> int:
    from fusionseg.files import folder_lock
    from fusionseg.runtime.devices import set_threads
    from fusionseg.workflows.demo import demo_settings, run_demo

    args = build_parser(prog).parse_args(argv)
    settings = demo_settings(phantoms=args.phantoms, quick=args.quick)
    threads, reason = set_threads(args.threads)
    data = "synthetic phantoms" if args.phantoms else "real nuclei image"
    run = "quick" if args.quick else "full"
    print(f"fusionseg demo → {args.output} ({data}, {run} run, {threads} CPU thread(s): {reason})")
    check_demo_folder(args.output)
    with folder_lock(args.output, "demo folder"):
        result = run_demo(
            args.output, settings, fusion=args.fusion, seed=args.seed, progress=args.progress, device=args.device
        )
    print()
    print(result["table"])
    print(
        f"\nmean test Dice {result['mean_dice']:.4f} | train {result['train_s']:.0f} s, "
        f"predict {result['predict_s']:.1f} s, total {result['total_s']:.0f} s | report: {result['report']}"
    )
    if not args.quick and result["mean_dice"] < settings.pass_dice:
        print(
            f"note: the mean Dice is below {settings.pass_dice}; the machine may have been too busy for the time budget"
        )
    return 0
