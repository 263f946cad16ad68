"""``fusionseg predict``: sliding-window prediction of image files with a fusionseg checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusionseg.cli.options import add_alias, add_runtime_options, positive_int
from fusionseg.errors import InputError

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg predict") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Sliding-window prediction with a fusionseg checkpoint.")
    p.add_argument(
        "--checkpoint", type=Path, help="checkpoint written by `fusionseg train` (best.pt) or import-weights"
    )
    add_alias(p, "--model", "--checkpoint", "checkpoint", type=Path)
    p.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    p.add_argument("--output", required=True, type=Path, help="folder for the label maps")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--sw-batch-size", type=positive_int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (1 + spatial_dims passes)")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    add_runtime_options(p)
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg predict") -> int:
    from fusionseg.engine.infer import find_inputs, load_model, predict_files
    from fusionseg.engine.runtime import pick_device, resolve_amp, set_threads

    args = build_parser(prog).parse_args(argv)
    if args.checkpoint is None:
        raise InputError("--checkpoint is required: the best.pt written by `fusionseg train` (or import-weights)")
    threads, reason = set_threads(args.threads)
    device = pick_device(args.device)
    amp = resolve_amp(device, args.amp) is not None
    if args.progress and device.type == "cpu":
        print(f"CPU threads: {threads} ({reason})")
    model, pre, _ = load_model(args.checkpoint, device)
    cases = find_inputs(args.input, int(pre.get("in_channels", 1)))
    written, failed = predict_files(
        model,
        pre,
        cases,
        args.output,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        tta=args.tta,
        probabilities=args.probabilities,
        device=device,
        amp=amp,
        progress=args.progress,
    )
    print(f"wrote {len(written)} prediction(s) to {args.output}")
    if failed:
        print(f"{prog}: {len(failed)} of {len(cases)} case(s) failed:", file=sys.stderr)
        for cid, message in failed:
            print(f"  {cid}: {message}", file=sys.stderr)
        return 1
    return 0
