"""Export a model to TorchScript or ONNX and check the file reproduces eager outputs.

``fusionseg export --checkpoint CKPT --format torchscript|onnx --output FILE [--patch-size 96,96]``.
The exported graph returns the full-resolution logits only (deep-supervision heads are dropped)
and carries the checkpoint's model config and preprocessing as metadata (TorchScript extra file
``fusionseg.json``, ONNX ``metadata_props["fusionseg"]``). The file appears only once the
check passed (written to a temporary name, then renamed).

Example:
    >>> export_model(model, torch.randn(1, 1, 64, 64, 64), "onnx", "dnet.onnx")   # verifies within 1e-4
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fusionseg.errors import FusionSegError, InputError
from fusionseg.files import atomic_write, ensure_writable_dir
from fusionseg.nets.registry import model_attribute

if TYPE_CHECKING:
    from fusionseg.data.preprocessing import AnyPreprocessing

__all__ = ["FORMATS", "ExportMismatchError", "InferenceWrapper", "example_shape", "export_model", "run_exported"]

FORMATS = ("torchscript", "onnx")


class ExportMismatchError(FusionSegError):
    """The exported file does not reproduce the eager model within tolerance (nothing was written)."""


class InferenceWrapper(nn.Module):
    """``model(x)`` → full-resolution logits (first output of a deep-supervision tuple/list)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(*inputs)
        return out[0] if isinstance(out, tuple | list) else out


def _as_tuple(example: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(example) if isinstance(example, tuple | list) else (example,)


def _input_names(n: int) -> list[str]:
    return ["input"] if n == 1 else [f"input{i}" for i in range(n)]


def run_exported(path: str | os.PathLike, inputs: tuple[torch.Tensor, ...], fmt: str) -> torch.Tensor:
    """Run an exported file on CPU (TorchScript via ``torch.jit.load``, ONNX via onnxruntime)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            return module(*inputs)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(np.asarray(session.run(None, feeds)[0]))


def _export_torchscript(model: nn.Module, inputs: tuple, path: Path, metadata: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants, as intended
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream; still supported
        traced = torch.jit.trace(model, inputs, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"fusionseg.json": metadata})


def _export_onnx(
    model: nn.Module, inputs: tuple, path: Path, metadata: str, kind: str, opset: int | None, dynamic_batch: bool
) -> None:
    names = _input_names(len(inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dynamo":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            dyn = None
            if dynamic_batch:
                batch = torch.export.Dim("batch")
                dyn = (tuple({0: batch} for _ in inputs),)  # forward(*inputs): one entry holding all inputs
                # torch.export specialises a size-1 dimension to the constant 1: trace with batch 2.
                inputs = tuple(torch.cat([t, t]) if t.shape[0] == 1 else t for t in inputs)
            # Trace attention with the math kernel: the ONNX graph is the math form anyway, and fused CPU
            # kernels return other strides than their decomposition (a later view then fails to export).
            with sdpa_kernel([SDPBackend.MATH]):
                torch.onnx.export(
                    model, inputs, str(path), dynamo=True, input_names=names, output_names=["logits"],
                    opset_version=opset, dynamic_shapes=dyn, external_data=False, verbose=False,
                )  # fmt: skip
        else:
            axes = {n: {0: "batch"} for n in [*names, "logits"]} if dynamic_batch else None
            torch.onnx.export(
                model, inputs, str(path), dynamo=False, input_names=names, output_names=["logits"],
                opset_version=opset or 17, dynamic_axes=axes,
            )  # fmt: skip
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fusionseg", metadata
    onnx.save(proto, str(path))


def _verify(wrapper: nn.Module, inputs: tuple, path: Path, fmt: str, atol: float) -> float:
    """Largest |exported - eager| on ``inputs`` and on a second random input (catches frozen branches)."""
    gen = torch.Generator().manual_seed(1234)
    trials = [inputs, tuple(torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in inputs)]
    diff = 0.0
    for trial in trials:
        with torch.inference_mode():
            expected = wrapper(*trial)
        try:
            got = run_exported(path, trial, fmt)
        except Exception as err:  # onnxruntime / TorchScript raise their own types for invalid graphs
            raise ExportMismatchError(f"the exported {fmt} file does not run: {_one_line(err)}") from None
        if tuple(got.shape) != tuple(expected.shape):
            raise ExportMismatchError(f"exported output shape {tuple(got.shape)} != eager {tuple(expected.shape)}")
        diff = max(diff, float((got.float() - expected.float()).abs().max()))
    if not diff <= atol:
        raise ExportMismatchError(f"exported output differs from eager by {diff:.3g} > {atol:g}")
    return diff


def _one_line(err: BaseException, limit: int = 240) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())
    return f"{type(err).__name__}: {text[:limit]}"


def export_model(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    fmt: str,
    path: str | os.PathLike,
    *,
    atol: float = 1e-4,
    verify: bool = True,
    metadata: dict[str, Any] | None = None,
    onnx_exporter: str = "auto",
    opset: int | None = None,
    dynamic_batch: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (eval mode, CPU) for inputs shaped like ``example`` and verify it.

    Args:
        model: any module; a deep-supervision tuple output is reduced to its first element.
        example: input tensor (or tuple of tensors for multi-input modules such as DFF/TIF).
        fmt: "torchscript" or "onnx".
        path: output file; written only if the export (and verification) succeeds.
        atol: largest allowed |exported - eager| on the example and on a second random input.
        metadata: JSON-able dict embedded in the file (e.g. model config and preprocessing).
        onnx_exporter: "auto" (torch.export-based, then the TorchScript-based one if the first fails
            to export or to verify), "dynamo" or "legacy".
        dynamic_batch: export with a symbolic batch dimension.

    Returns:
        {"path", "format", "max_abs_diff", "exporter"}.

    Raises:
        ExportMismatchError: no exporter produced a file matching eager within ``atol`` (nothing written).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if onnx_exporter not in ("auto", "dynamo", "legacy"):
        raise ValueError(f"onnx_exporter must be auto, dynamo or legacy, got {onnx_exporter!r}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise InputError(
                f"ONNX export needs onnx and onnxruntime ({err.name} is missing): pip install 'fusionseg[onnx]'"
            ) from None
    path = Path(path)
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), "output directory")
    wrapper = InferenceWrapper(model).eval().cpu()
    inputs = tuple(t.detach().cpu().float() for t in _as_tuple(example))
    meta = json.dumps(metadata or {}, default=str)
    if fmt == "torchscript":
        attempts = ["torch.jit.trace"]
    else:
        attempts = ["dynamo", "legacy"] if onnx_exporter == "auto" else [onnx_exporter]
    errors = []
    for kind in attempts:
        try:
            with atomic_write(path) as tmp:
                try:  # no_grad: inference graphs, and no training-only autograd.Functions (TIF's CPU attention)
                    with torch.no_grad():
                        if fmt == "torchscript":
                            _export_torchscript(wrapper, inputs, tmp, meta)
                        else:
                            _export_onnx(wrapper, inputs, tmp, meta, kind, opset, dynamic_batch)
                except Exception as err:  # tracer / exporter internals raise many types
                    raise ExportMismatchError(f"export failed: {_one_line(err)}") from None
                diff = _verify(wrapper, inputs, tmp, fmt, atol) if verify else float("nan")
        except ExportMismatchError as err:
            errors.append(f"{kind}: {err}")
            continue
        exporter = kind if fmt == "torchscript" else f"torch.onnx ({kind})"
        return {"path": path, "format": fmt, "max_abs_diff": diff, "exporter": exporter}
    raise ExportMismatchError(
        f"{fmt} export of {type(model).__name__} failed, nothing written to {path}: " + " | ".join(errors)
    )


def example_shape(
    model: nn.Module, pre: AnyPreprocessing | None, size: list[int] | None, batch: int = 1
) -> tuple[int, ...]:
    """Shape (B, C, *S) of the example input for exporting ``model``: ``size``, else the training patch.

    Raises :class:`InputError` naming the nearest valid size when ``size`` does not fit the model.
    """
    spatial_dims, multiple = model_attribute(model, "spatial_dims"), model_attribute(model, "size_multiple")
    if size is None:
        size = list((pre.patch_size if pre is not None else None) or [2 * multiple] * spatial_dims)
    size = [int(s) for s in size]
    if len(size) == 1:
        size = size * spatial_dims
    if len(size) != spatial_dims:
        raise InputError(f"--patch-size needs {spatial_dims} values (or one) for this {spatial_dims}D model")
    shape = (int(batch), model_attribute(model, "in_channels"), *size)
    # check_input is part of the model contract; torch types a module's attributes as Tensor | Module
    model.check_input(torch.empty(shape, device="meta"))  # type: ignore[operator]
    return shape
