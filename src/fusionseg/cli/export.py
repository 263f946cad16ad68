"""``fusionseg export``: a checkpoint to TorchScript or ONNX (verified against eager PyTorch), or a MONAI bundle."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fusionseg.cli.options import SizesAction, path, positive_int, sizes
from fusionseg.errors import InputError

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
    from fusionseg.files import folder_lock

    args = build_parser(prog).parse_args(argv)
    check_not_input(args.output, args.checkpoint)
    check_replaceable(args.output, args.format)
    if args.opset is not None and not MIN_OPSET <= args.opset <= _max_opset():
        raise InputError(f"--opset must be between {MIN_OPSET} and {_max_opset()}, got {args.opset}; or leave it out")
    if args.format != "bundle" and args.output.is_dir():
        raise InputError(f"--output {args.output} is a folder; pass the file to write, e.g. {args.output / 'model.ts'}")
    with folder_lock(args.output.parent if str(args.output.parent) else Path("."), "export folder"):
        if args.format == "bundle":
            return _export_bundle(args)
        return _export_file(args)


def check_not_input(output: Path, checkpoint: Path) -> None:
    """:class:`InputError` when ``output`` is ``checkpoint`` or a folder holding it (the export would replace it)."""
    out, source = Path(os.path.realpath(output)), Path(os.path.realpath(checkpoint))
    if out == source or out in source.parents:
        raise InputError(f"--output {output} would replace --checkpoint {checkpoint}; choose another output path")


MIN_OPSET = 7  # the oldest opset the ONNX exporters write


def _max_opset() -> int:
    try:
        import onnx

        return int(onnx.defs.onnx_opset_version())
    except (ImportError, AttributeError):
        return 30


def check_replaceable(output: Path, format: str) -> None:
    """:class:`InputError` when ``output`` is an existing file that is not an export of ``format`` (e.g. a
    checkpoint, dataset.json): export replaces only what an earlier export wrote."""
    import zipfile

    if format == "bundle" or not output.is_file():
        return
    if format == "torchscript":
        try:
            with zipfile.ZipFile(output) as archive:
                ours = any("/code/" in name for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            ours = False
    else:  # an ONNX protobuf is not a zip archive (a checkpoint is) and is named .onnx
        with open(output, "rb") as f:
            ours = output.suffix.lower() == ".onnx" and f.read(2) != b"PK"
    if not ours:
        raise InputError(
            f"--output {output} exists and is not a {format} export (fusionseg replaces only its own exports); "
            "choose a new file name or delete it first"
        )


def _export_file(args) -> int:
    import torch

    from fusionseg.checkpoints.checkpoint import load_checkpoint, rebuild_model
    from fusionseg.deploy.export import example_shape, export_model
    from fusionseg.nets.registry import create_model
    from fusionseg.runtime.memory import check_fits, training_memory

    ckpt = load_checkpoint(args.checkpoint)
    model = rebuild_model(ckpt)
    shape = example_shape(model, ckpt.get("preprocessing"), list(args.patch_size) if args.patch_size else None,
                          args.batch_size)  # fmt: skip
    sizes = f"--batch-size {shape[0]} × --patch-size {','.join(map(str, shape[2:]))}"
    check_fits(training_memory(lambda: create_model(**_model_config(ckpt)), shape), "cpu", sizes, "export")
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    result = export_model(
        model, example, args.format, args.output, atol=args.atol, verify=args.verify,
        metadata={"model": ckpt["model"], "preprocessing": ckpt.get("preprocessing"), "input_shape": list(shape)},
        onnx_exporter=args.onnx_exporter, opset=args.opset, dynamic_batch=args.dynamic_batch,
    )  # fmt: skip
    check = f"max |exported - eager| = {result['max_abs_diff']:.2e}" if args.verify else "not verified"
    print(f"wrote {args.output} ({args.format} via {result['exporter']}, input {list(shape)}; {check})")
    return 0


def _model_config(ckpt: dict) -> dict:
    return {"name": ckpt["model"]["name"], **(ckpt["model"].get("kwargs") or {})}


def _export_bundle(args) -> int:
    from fusionseg.deploy.bundle import export_bundle

    window = list(args.patch_size) if args.patch_size else None
    result = export_bundle(args.checkpoint, args.output, window=window, atol=args.atol)
    print(
        f"wrote MONAI bundle {args.output} (window {result['window']}, TorchScript models/model.ts, max |bundle - "
        f"eager| = {result['max_abs_diff']:.2e}); it needs no fusionseg: {result['install']}; run: python -m "
        f"monai.bundle run --config_file {args.output}/configs/inference.json --bundle_root {args.output} "
        "--dataset_dir IMAGES --output_dir OUT"
    )
    return 0
