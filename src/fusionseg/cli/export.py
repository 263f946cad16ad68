"""``fusionseg export``: a checkpoint to TorchScript or ONNX (verified against eager PyTorch), or a MONAI bundle.

Parsing only; the work is :func:`fusionseg.deploy.run.run_export`.
"""

from __future__ import annotations

import argparse

from fusionseg.cli.options import SizesAction, path, positive_int, sizes

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg export") -> argparse.ArgumentParser:
    from fusionseg.deploy.export import FORMATS

    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Export a fusionseg checkpoint to TorchScript or ONNX, or as a MONAI bundle.",
    )
    p.add_argument("--checkpoint", required=True, type=path, help="fusionseg checkpoint (.pt)")
    p.add_argument("--format", required=True, choices=(*FORMATS, "bundle"))
    p.add_argument(
        "--output", required=True, type=path, help="file to write (.ts / .pt or .onnx), or the bundle's folder"
    )
    p.add_argument(
        "--patch-size", type=sizes, action=SizesAction, default=None,
        help="spatial size of the exported input, e.g. 96,96, or the bundle's sliding window "
        "(default: the checkpoint's training patch)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch of the example input (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: symbolic batch dimension")
    p.add_argument("--onnx-exporter", choices=("auto", "dynamo", "legacy"), default="auto")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--atol", type=float, default=1e-4, help="verification tolerance (default 1e-4)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the exported-vs-eager check")
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg export") -> int:
    from fusionseg.deploy.run import ExportOptions, run_export

    args = build_parser(prog).parse_args(argv)
    return run_export(ExportOptions(**vars(args)))
