"""Sliding-window inference and ``fusionseg predict``.

:func:`predict_volume` runs MONAI's Gaussian-weighted sliding window over one preprocessed image,
with optional flip test-time augmentation; the window is rounded up to the network's
``size_multiple`` and images smaller than it are padded (and cropped back) automatically.
``fusionseg predict`` rebuilds model and preprocessing from a checkpoint and writes label maps
(and optionally probabilities) in each input's own geometry via ``data.save_prediction``.

Example:
    >>> probs = predict_volume(model, image, pre, overlap=0.5)   # image (C, *S) → probs (K, *S)
    >>> label_map = probs.argmax(0)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from fusionseg.errors import InputError

__all__ = ["find_inputs", "load_model", "main", "predict_files", "predict_volume", "round_up", "window_size"]

IMAGE_EXTENSIONS = (
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".png",
    ".tif",
    ".tiff",
    ".jpg",
    ".jpeg",
    ".bmp",
)


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ≥ value."""
    return -(-int(value) // multiple) * multiple


def window_size(spatial_shape: Sequence[int], patch_size: Sequence[int] | None, size_multiple: int) -> tuple[int, ...]:
    """Sliding-window size: the training patch (or the whole image when none) rounded up to ``size_multiple``."""
    base = patch_size if patch_size else spatial_shape
    if len(base) != len(spatial_shape):
        raise InputError(f"patch size {tuple(base)} does not match a {len(spatial_shape)}-D image")
    return tuple(round_up(s, size_multiple) for s in base)


def _flips(spatial_dims: int) -> list[tuple[int, ...]]:
    """Identity plus each single spatial-axis flip (dims of a (B, C, *S) tensor)."""
    return [(), *((d + 2,) for d in range(spatial_dims))]


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: torch.Tensor,
    pre: dict | None = None,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    device: str | torch.device | None = None,
    amp: bool = False,
    roi_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Class probabilities of one image.

    Args:
        model: network returning logits (B, K, *S) or a tuple of them (the first is used).
        image: preprocessed image (C, *S).
        pre: preprocessing dict (its ``patch_size`` sets the window; whole image when absent).
        overlap: window overlap fraction in [0, 1).
        sw_batch_size: windows per forward pass.
        tta: average over flips of each spatial axis (1 + spatial_dims passes).
        device: where the network runs (default: the model's device); blending happens there too.
        amp: autocast (fp16 on CUDA, bf16 on CPU).
        roi_size: explicit window size (overrides ``pre``); rounded up to ``model.size_multiple``.

    Returns:
        float32 probabilities (K, *S) on the CPU.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim < 3:
        raise InputError(f"predict_volume expects an image (C, *S) with 2 or 3 spatial dims, got {tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    spatial = tuple(image.shape[1:])
    multiple = int(getattr(model, "size_multiple", 1) or 1)
    patch = roi_size if roi_size is not None else (pre or {}).get("patch_size")
    roi = window_size(spatial, patch, multiple)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with _autocast(device, amp):
            out = model(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return torch.softmax(out.float(), 1)

    x = image[None].float().to(device)
    flips = _flips(len(spatial)) if tta else [()]
    probs = None
    try:
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            p = sliding_window_inference(
                xi, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian", device=device, sw_device=device
            )
            p = torch.as_tensor(p)  # drop MetaTensor
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs + p
    finally:
        model.train(was_training)
    return (probs / len(flips))[0].float().cpu()


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild the network of a fusionseg checkpoint → (model in eval mode, preprocessing, checkpoint)."""
    from fusionseg.engine.checkpoint import load_checkpoint, rebuild_model

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") != "fusionseg" or "model" not in ckpt or "state_dict" not in ckpt:
        raise InputError(
            f"{checkpoint} is not a fusionseg training checkpoint (needs 'model', 'preprocessing' and 'state_dict'); "
            "use the best.pt/last.pt written by `fusionseg train`, or convert with `fusionseg import-weights`"
        )
    if not isinstance(ckpt.get("preprocessing"), dict):
        raise InputError(f"{checkpoint} carries no preprocessing; it cannot be used for prediction")
    model = rebuild_model(ckpt)
    return model.to(device).eval(), ckpt["preprocessing"], ckpt


def _split_ext(path: Path) -> tuple[str, str]:
    name = path.name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[len(name) - len(ext) :]
    return path.stem, path.suffix


def find_inputs(source: Path, in_channels: int = 1) -> list[tuple[str, list[Path]]]:
    """Cases to predict: a file, or every image file in a folder → [(case_id, [channel files])].

    With ``in_channels > 1``, nnU-Net style names ``CASE_0000.nii.gz, CASE_0001.nii.gz, ...`` are grouped
    into one case; otherwise each file is a case (e.g. an RGB PNG carries its channels itself).
    """
    source = Path(source)
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(
            p
            for p in source.iterdir()
            if p.is_file() and not p.name.startswith(".") and _split_ext(p)[1] in IMAGE_EXTENSIONS
        )
        if not files:
            raise InputError(f"{source} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    else:
        raise InputError(f"input {source} does not exist; pass an image file or a folder of images")
    if in_channels == 1:
        return [(_case_id(path, strip_any_channel=False), [path]) for path in files]
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(_case_id(path, strip_any_channel=True), []).append(path)
    for cid, paths in groups.items():
        if len(paths) not in (1, in_channels):  # one file may carry every channel (RGB PNG, 4-D NIfTI)
            raise InputError(
                f"case {cid!r} has {len(paths)} channel files but the model expects {in_channels}; "
                f"name them {cid}_0000 ... {cid}_{in_channels - 1:04d}"
            )
    return list(groups.items())


def _case_id(path: Path, strip_any_channel: bool) -> str:
    """File name without extension and without an nnU-Net channel suffix (``_0000`` only, unless grouping)."""
    stem, _ = _split_ext(path)
    base, _, idx = stem.rpartition("_")
    if base and len(idx) == 4 and idx.isdigit() and (strip_any_channel or idx == "0000"):
        return base
    return stem


def _output_ext(image: Path) -> str:
    ext = _split_ext(image)[1].lower()
    return {".nhdr": ".nrrd", ".jpg": ".png", ".jpeg": ".png", ".bmp": ".png", ".tif": ".png", ".tiff": ".png"}.get(
        ext, ext
    )


def _save_atomic(array, meta, out_path: Path) -> Path:
    """Write via ``data.save_prediction`` to a hidden temp name in the same folder, then rename."""
    from fusionseg.data import save_prediction
    from fusionseg.engine.io_safety import atomic_write

    with atomic_write(out_path) as tmp:
        save_prediction(array, meta, tmp)
    return out_path


def predict_files(
    model: nn.Module,
    pre: dict,
    cases: list[tuple[str, list[Path]]],
    output: Path,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    probabilities: bool = False,
    device: str | torch.device = "cpu",
    amp: bool = False,
    progress: bool = True,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Predict every case → (written label files, [(case_id, error message)] of the cases that failed)."""
    if pre.get("kind") == "nnunet":  # imported from nnU-Net: its own preprocessing, sliding window and export
        from fusionseg.nnunet.predict import predict_files as predict_nnunet_files

        return predict_nnunet_files(
            model, pre, cases, output, overlap=overlap, tta=tta, probabilities=probabilities, device=device,
            progress=progress,
        )  # fmt: skip
    from fusionseg.data import load_for_inference

    output.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for i, (cid, images) in enumerate(cases, 1):
        start = time.perf_counter()
        out_path = output / f"{cid}{_output_ext(images[0])}"
        try:
            image, meta = load_for_inference(list(images), pre)
            probs = predict_volume(
                model,
                torch.as_tensor(image),
                pre,
                overlap=overlap,
                sw_batch_size=sw_batch_size,
                tta=tta,
                device=device,
                amp=amp,
            )
            label_map = probs.argmax(0).to(torch.uint8 if probs.shape[0] < 256 else torch.int16).numpy()
            _save_atomic(label_map, meta, out_path)
            if probabilities:
                ext = _output_ext(images[0])
                prob_path = output / f"{cid}_probabilities{'.npz' if ext == '.png' else ext}"
                try:
                    _save_probabilities(probs.numpy(), meta, prob_path)
                except BaseException:
                    out_path.unlink(missing_ok=True)  # all files of a case or none
                    raise
            written.append(out_path)
        except (InputError, ValueError, OSError, RuntimeError, MemoryError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            failed.append((cid, message))
            if progress:
                print(f"[{i}/{len(cases)}] {cid}: FAILED: {message}", file=sys.stderr)
            continue
        if progress:
            print(f"[{i}/{len(cases)}] {cid} → {out_path} ({time.perf_counter() - start:.1f} s)")
    return written, failed


def _save_probabilities(probs, meta, out_path: Path) -> Path:
    if out_path.suffix == ".npz":
        import numpy as np

        from fusionseg.engine.io_safety import atomic_write

        with atomic_write(out_path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=probs.astype(np.float16))
        return out_path
    return _save_atomic(probs, meta, out_path)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available else CPU; errors clearly when CUDA is asked for but missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return device


def main(argv: list[str] | None = None, prog: str = "fusionseg predict") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Sliding-window prediction with a fusionseg checkpoint.")
    parser.add_argument("--model", required=True, type=Path, help="checkpoint written by `fusionseg train` (best.pt)")
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, type=Path, help="folder for the label maps")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (1 + spatial_dims passes)")
    parser.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--amp", action="store_true", help="autocast: fp16 on CUDA, bf16 on CPU")
    parser.add_argument(
        "--threads", default=None, help="CPU threads: a number, or auto = idle cores (default: torch's)"
    )
    args = parser.parse_args(argv)
    from fusionseg.engine.train import set_threads

    set_threads(args.threads)
    if args.sw_batch_size < 1:
        raise InputError(f"--sw-batch-size must be ≥ 1, got {args.sw_batch_size}")
    device = pick_device(args.device)
    model, pre, _ = load_model(args.model, device)
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
        amp=args.amp,
    )
    print(f"wrote {len(written)} prediction(s) to {args.output}")
    if failed:
        print(f"{prog}: {len(failed)} of {len(cases)} case(s) failed:", file=sys.stderr)
        for cid, message in failed:
            print(f"  {cid}: {message}", file=sys.stderr)
        return 1
    return 0
