"""Checkpoints: atomic writes, safe (``weights_only=True``) loading, model rebuild and exact-resume RNG state.

A fusionseg checkpoint is a plain dict of tensors and plain data (no pickled objects)::

    {"format": "fusionseg", "version": 1,
     "model": {"name": "unet", "kwargs": {...}},      # rebuild with create_model(name, **kwargs)
     "preprocessing": {...},                          # plain data used by predict
     "state_dict": {...}, "optimizer": {...}, "epoch": 3, "rng": capture_rng_state(), ...}

Also the ``fusionseg import-weights`` command (:func:`main`), which turns an official D-Net /
DS-TransUNet ``.pth``/``.model`` file into a fusionseg checkpoint.

Example:
    >>> save_checkpoint("run/last.pt", {"format": "fusionseg", "version": 1, "state_dict": {}})
    >>> load_checkpoint("run/last.pt")["version"]
    1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionseg.engine.io_safety import ensure_file, ensure_writable_dir, fsync_dir, parse_json_object, publish_mode
from fusionseg.errors import InputError
from fusionseg.nets.weights import one_line, read_weights_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "build_checkpoint",
    "capture_rng_state",
    "load_checkpoint",
    "main",
    "rebuild_model",
    "restore_rng_state",
    "save_checkpoint",
    "to_plain_data",
]

CHECKPOINT_FORMAT = "fusionseg"
CHECKPOINT_VERSION = 1

_PLAIN_SCALARS = (str, int, float, bool, complex, bytes, type(None), torch.dtype, torch.device, torch.Size)


# --------------------------------------------------------------------------------------------- saving
def to_plain_data(obj: Any, where: str = "state") -> Any:
    """``obj`` with only tensors and plain data, so that ``torch.load(weights_only=True)`` accepts it.

    Paths become ``str``, numpy scalars Python numbers, numpy arrays tensors; containers are
    copied (tensors are not). Anything else is a programming error: ``TypeError`` naming the entry.
    """
    if isinstance(obj, (torch.Tensor, *_PLAIN_SCALARS)):
        return obj
    if isinstance(obj, Mapping):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool | type(None)):
                raise TypeError(f"checkpoint key {where}[{k!r}] is a {type(k).__name__}; use str or int keys")
            out[k] = to_plain_data(v, f"{where}[{k!r}]")
        if hasattr(obj, "_metadata"):  # state_dict versions, read by some modules' _load_from_state_dict
            out._metadata = to_plain_data(obj._metadata, f"{where}._metadata")
        return out
    if isinstance(obj, list | tuple | set):
        items = [to_plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return type(obj)(items) if type(obj) in (list, tuple, set) else items  # namedtuple → list
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    raise TypeError(
        f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only "
        "tensors and plain data (str/int/float/bool/None/list/tuple/dict) — convert it (e.g. vars(namespace))"
    )


def _remove_stale_temp_files(path: Path) -> None:
    """Delete ``.NAME.<pid>.*.tmp`` leftovers of writers that died (e.g. SIGKILL during a save)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 2 :].split(".")
        if not parts or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # alive under another user: not ours to delete


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    ``state`` is checked first (:func:`to_plain_data`), so every file written here loads with
    ``weights_only=True``. An unwritable folder raises :class:`InputError`.
    """
    path = Path(path)
    state = to_plain_data(state)
    ensure_writable_dir(path.parent, "checkpoint directory")
    _remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, publish_mode(path))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.strerror:
            raise InputError(
                f"could not write checkpoint {path}: {err.strerror}; free space or choose another path"
            ) from None
        raise
    fsync_dir(path.parent)
    return path


# --------------------------------------------------------------------------------------------- loading
def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, allow_numpy: bool = False
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse pickled code or a corrupt file with one clear line.

    Args:
        path: a fusionseg checkpoint or any ``torch.save``-d dict (official ``.pth``/``.model``).
        map_location: where tensors go (default CPU).
        allow_numpy: also accept numpy arrays/scalars (data only, never code) — official nnU-Net
            ``.model`` files store metrics as numpy scalars.

    Raises:
        InputError: missing/empty/unreadable file, not a PyTorch file (LFS pointer, HTML page, garbage),
            a torn or corrupt file, or a file containing pickled Python objects (possible code).
    """
    return read_weights_file(path, map_location, allow_numpy=allow_numpy, what="checkpoint")


# --------------------------------------------------------------------------------------------- model
def build_checkpoint(
    model: nn.Module,
    *,
    preprocessing: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    epoch: int = 0,
    step: int = 0,
    best_metric: float | None = None,
    train_args: dict | None = None,
    rng: bool = True,
) -> dict[str, Any]:
    """The contract-2 checkpoint dict of ``model`` (DDP / compiled wrappers are unwrapped).

    Example:
        >>> save_checkpoint("run/last.pt", build_checkpoint(model, optimizer=opt, epoch=3))
    """
    from fusionseg.engine.distributed import unwrap_model

    model = unwrap_model(model)
    config = getattr(model, "config", None)
    if not (isinstance(config, dict) and "name" in config):
        raise TypeError(f"{type(model).__name__} has no .config {{'name', 'kwargs'}}; build it with create_model()")
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {"name": config["name"], "kwargs": dict(config.get("kwargs", {}))},
        "preprocessing": preprocessing,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "best_metric": None if best_metric is None else float(best_metric),
        "rng": capture_rng_state() if rng else None,
        "train_args": train_args or {},
    }


def _check_fusionseg(ckpt: dict, source: str) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("model"), dict):
        raise InputError(
            f"{source} is not a fusionseg checkpoint (no 'format'/'model' entries); "
            "for official D-Net / DS-TransUNet weights run `fusionseg import-weights` first"
        )
    version = ckpt.get("version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise InputError(f"{source} has checkpoint version {version!r}, newer than this fusionseg; upgrade fusionseg")
    if "state_dict" not in ckpt or not isinstance(ckpt["state_dict"], dict):
        raise InputError(f"{source} has no 'state_dict'; it is incomplete — use another checkpoint")


def rebuild_model(ckpt: dict[str, Any] | str | os.PathLike, strict: bool = True) -> nn.Module:
    """Build the checkpoint's model with ``create_model(name, **kwargs)`` and load its weights (eval mode).

    ``ckpt`` is a loaded checkpoint dict or a path. A mismatch between weights and model raises
    :class:`InputError` listing the missing / unexpected / mis-shaped keys (``strict=False``
    loads what fits and skips the rest).
    """
    from fusionseg.nets.registry import create_model
    from fusionseg.nets.weights import load_pretrained

    source = "checkpoint"
    if not isinstance(ckpt, dict):
        source = f"checkpoint {ckpt}"
        ckpt = load_checkpoint(ckpt)
    _check_fusionseg(ckpt, source)
    name, kwargs = ckpt["model"].get("name"), ckpt["model"].get("kwargs") or {}
    try:
        model = create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{source} describes model {name!r} with {kwargs} that this fusionseg cannot build "
            f"({one_line(str(err), 160)}); use the fusionseg version that wrote it"
        ) from None
    load_pretrained(model, ckpt["state_dict"], strict=strict)
    return model.eval()


# --------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Plain-data snapshot of the torch (CPU + CUDA), numpy-global and Python ``random`` generators."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any] | None) -> None:
    """Put back the generators captured by :func:`capture_rng_state` (None or missing parts are skipped)."""
    if not state:
        return
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    npy = state.get("numpy")
    if npy is not None:
        keys = np.asarray(npy["keys"].numpy() if isinstance(npy["keys"], torch.Tensor) else npy["keys"], np.uint32)
        np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    py = state.get("python")
    if py is not None:
        version, internal, gauss = py
        random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------------------------- CLI
def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Convert official D-Net / DS-TransUNet weights (.pth, .model, nnU-Net checkpoints) into a "
        "fusionseg checkpoint usable by `fusionseg predict` / `export` / `train --init`. Without --model, --weights "
        "is an nnU-Net v2 checkpoint_final.pth: network, plans and preprocessing come from it (docs/nnunet.md).",
    )
    p.add_argument(
        "--model", default=None, help="registry name, e.g. dnet, dnet_v1, ds_transunet; omit for nnU-Net v2 checkpoints"
    )
    p.add_argument("--weights", required=True, type=Path, help="official weights file")
    p.add_argument("--output", required=True, type=Path, help="fusionseg checkpoint to write (.pt)")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default: the model's default)")
    p.add_argument("--out-channels", type=int, default=None, help="classes incl. background (default: model's)")
    p.add_argument("--spatial-dims", type=int, default=None, choices=(2, 3), help="2 or 3 (default: model's)")
    ds = p.add_mutually_exclusive_group()
    ds.add_argument("--deep-supervision", dest="deep_supervision", action="store_true", default=None)
    ds.add_argument("--no-deep-supervision", dest="deep_supervision", action="store_false")
    p.add_argument("--model-kwargs", default="{}", help="extra create_model kwargs as JSON, e.g. '{\"dim\": 96}'")
    pre = p.add_mutually_exclusive_group()
    pre.add_argument("--preprocessing", type=Path, default=None, help="JSON file with the preprocessing to embed")
    pre.add_argument(
        "--dataset", type=Path, default=None, help="dataset folder: embed its preprocessing (needed by predict)"
    )
    p.add_argument("--patch-size", type=int, nargs="+", default=None, help="with --dataset: the patch size")
    p.add_argument("--non-strict", action="store_true", help="load the keys that fit, skip the rest (report them)")
    return p


def main(argv: list[str], prog: str = "fusionseg import-weights") -> int:
    """``fusionseg import-weights --model dnet --weights FILE --output CKPT [--in-channels N --out-channels K]``."""
    from fusionseg.nets.registry import create_model, list_models
    from fusionseg.nets.weights import load_pretrained

    args = _parser(prog).parse_args(argv)
    if args.model is None:  # an nnU-Net v2 checkpoint_final.pth carries network, plans and preprocessing itself
        from fusionseg.nnunet import import_weights

        return import_weights(args)
    kwargs = parse_json_object(args.model_kwargs, "--model-kwargs", '{"dim": 96}')
    for key in ("in_channels", "out_channels", "spatial_dims", "deep_supervision"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.model.lower() not in list_models():
        raise InputError(f"unknown model {args.model!r}; choose one of {', '.join(list_models())}")
    preprocessing = None
    if args.preprocessing is not None:
        try:
            preprocessing = json.loads(ensure_file(args.preprocessing, "preprocessing file").read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"preprocessing file {args.preprocessing} is not valid JSON ({err.msg})") from None
    if args.dataset is not None:
        from fusionseg.data import build_preprocessing, scan_dataset

        preprocessing = build_preprocessing(scan_dataset(args.dataset), patch_size=args.patch_size)
    ensure_writable_dir(args.output.parent if str(args.output.parent) else Path("."), "output directory")
    try:
        model = create_model(args.model, **kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"cannot build {args.model} with {kwargs}: {one_line(str(err), 160)}") from None
    report = load_pretrained(model, args.weights, strict=not args.non_strict)
    ckpt = build_checkpoint(model, preprocessing=preprocessing, rng=False, train_args={"imported_from": args.weights})
    save_checkpoint(args.output, ckpt)
    print(report.summary())
    print(f"wrote {args.output} (model {args.model}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0
