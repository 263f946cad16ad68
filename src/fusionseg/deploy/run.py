"""``fusionseg export`` as one call: a checkpoint → TorchScript or ONNX (verified against eager), or a MONAI bundle.

:func:`run_export` takes the command's options (:class:`ExportOptions`), refuses outputs that would
replace the checkpoint or a file that is not an earlier export, and under the output folder's lock
writes the file (:func:`fusionseg.deploy.export.export_model`) or the bundle
(:func:`fusionseg.deploy.bundle.export_bundle`); it prints what it wrote and returns the exit status.

Example:
    >>> run_export(ExportOptions(checkpoint=Path("best.pt"), format="onnx", output=Path("model.onnx")))
    wrote model.onnx (onnx via dynamo, input [1, 1, 96, 96]; max |exported - eager| = 2.1e-06)
    0
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fusionseg.errors import InputError

__all__ = ["MIN_OPSET", "ExportOptions", "check_not_input", "check_replaceable", "run_export"]

MIN_OPSET = 7  # the oldest opset the ONNX exporters write


@dataclass(frozen=True)
class ExportOptions:
    """The options of ``fusionseg export`` (docs/cli.md), named as its parser's destinations.

    ``format``: ``torchscript``, ``onnx`` or ``bundle``. ``patch_size``: the exported input's spatial size, or
    the bundle's window (None: the checkpoint's training patch).
    """

    checkpoint: Path
    format: str
    output: Path
    patch_size: Sequence[int] | None = None
    batch_size: int = 1
    dynamic_batch: bool = False
    onnx_exporter: str = "auto"
    opset: int | None = None
    atol: float = 1e-4
    verify: bool = True


def run_export(options: ExportOptions) -> int:
    """Write the export ``options`` ask for → exit status 0 (InputError for outputs it must not replace)."""
    from fusionseg.files import folder_lock

    o = options
    check_not_input(o.output, o.checkpoint)
    check_replaceable(o.output, o.format)
    if o.opset is not None and not MIN_OPSET <= o.opset <= _max_opset():
        raise InputError(f"--opset must be between {MIN_OPSET} and {_max_opset()}, got {o.opset}; or leave it out")
    if o.format != "bundle" and o.output.is_dir():
        raise InputError(f"--output {o.output} is a folder; pass the file to write, e.g. {o.output / 'model.ts'}")
    with folder_lock(o.output.parent if str(o.output.parent) else Path("."), "export folder"):
        if o.format == "bundle":
            return _export_bundle(o)
        return _export_file(o)


def check_not_input(output: Path, checkpoint: Path) -> None:
    """:class:`InputError` when ``output`` is ``checkpoint`` or a folder holding it (the export would replace it)."""
    out, source = Path(os.path.realpath(output)), Path(os.path.realpath(checkpoint))
    if out == source or out in source.parents:
        raise InputError(f"--output {output} would replace --checkpoint {checkpoint}; choose another output path")


def _max_opset() -> int:
    try:
        import onnx

        return int(onnx.defs.onnx_opset_version())
    except (ImportError, AttributeError):
        return 30


def check_replaceable(output: Path, format: str) -> None:
    """:class:`InputError` when ``output`` is an existing file that is not an export of ``format`` (e.g. a
    checkpoint, dataset.json): export replaces only what an earlier export wrote."""
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


def _export_file(o: ExportOptions) -> int:
    import torch

    from fusionseg.checkpoints.checkpoint import load_checkpoint, rebuild_model
    from fusionseg.data.preprocessing import preprocessing_from_dict
    from fusionseg.deploy.export import example_shape, export_model
    from fusionseg.nets.registry import create_model
    from fusionseg.runtime.memory import check_fits, training_memory

    ckpt = load_checkpoint(o.checkpoint)
    model = rebuild_model(ckpt)  # checks the fields, the preprocessing included
    pre = preprocessing_from_dict(ckpt["preprocessing"]) if ckpt.get("preprocessing") is not None else None
    patch = list(o.patch_size) if o.patch_size else None
    shape = example_shape(model, pre, patch, o.batch_size)
    sizes = f"--batch-size {shape[0]} × --patch-size {','.join(map(str, shape[2:]))}"
    check_fits(training_memory(lambda: create_model(**_model_config(ckpt)), shape), "cpu", sizes, "export")
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    result = export_model(
        model, example, o.format, o.output, atol=o.atol, verify=o.verify,
        metadata={"model": ckpt["model"], "preprocessing": pre and pre.to_dict(), "input_shape": list(shape)},
        onnx_exporter=o.onnx_exporter, opset=o.opset, dynamic_batch=o.dynamic_batch,
    )  # fmt: skip
    check = f"max |exported - eager| = {result['max_abs_diff']:.2e}" if o.verify else "not verified"
    print(f"wrote {o.output} ({o.format} via {result['exporter']}, input {list(shape)}; {check})")
    return 0


def _model_config(ckpt: dict) -> dict:
    return {"name": ckpt["model"]["name"], **(ckpt["model"].get("kwargs") or {})}


def _export_bundle(o: ExportOptions) -> int:
    from fusionseg.deploy.bundle import export_bundle

    window = list(o.patch_size) if o.patch_size else None
    result = export_bundle(o.checkpoint, o.output, window=window, atol=o.atol)
    print(
        f"wrote MONAI bundle {o.output} (window {result['window']}, TorchScript models/model.ts, max |bundle - "
        f"eager| = {result['max_abs_diff']:.2e}); it needs no fusionseg: {result['install']}; run: python -m "
        f"monai.bundle run --config_file {o.output}/configs/inference.json --bundle_root {o.output} "
        "--dataset_dir IMAGES --output_dir OUT"
    )
    return 0
