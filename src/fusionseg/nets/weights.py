"""Load official / third-party weights into fusionseg models, with a clear report of what did not fit.

Accepts a path or an in-memory dict: a plain state_dict (``.pth``/``.model``), a fusionseg
checkpoint, an nnU-Net checkpoint (``network_weights``), or a dict with ``state_dict`` /
``model`` / ``model_state_dict`` / ``net``. ``module.`` (DataParallel/DDP) and ``_orig_mod.``
(``torch.compile``) prefixes are removed. Files are read with ``weights_only=True``.

Example:
    >>> model = create_model("dnet", in_channels=1, out_channels=16)
    >>> report = load_pretrained(model, "dnet_official.model")      # strict: InputError on any mismatch
    >>> print(report.summary())
    loaded 485/485 tensors from dnet_official.model
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionseg.errors import InputError
from fusionseg.files import ensure_file

__all__ = [
    "LoadReport",
    "extract_state_dict",
    "load_pretrained",
    "one_line",
    "read_weights_file",
    "strip_prefixes",
    "zip_damage",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")

# Where weights live inside known checkpoint layouts, tried in this order.
_CONTAINER_KEYS = ("network_weights", "state_dict", "model_state_dict", "model", "net", "network", "weights")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did. ``ok`` is True when every tensor matched both ways."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, absent from the file
    unexpected: list[str] = field(default_factory=list)  # in the file, absent from the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self, limit: int = 3) -> str:
        """One line: counts and the first ``limit`` keys of each kind of mismatch."""

        def show(keys: list[str]) -> str:
            more = f", ... {len(keys) - limit} more" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = []
        if self.mismatched:
            shapes = [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} with another shape ({show(shapes)})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the file ({show(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected in the file ({show(self.unexpected)})")
        return "; ".join(parts)

    def summary(self) -> str:
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        line = f"loaded {len(self.loaded)}/{total} tensors from {self.source}"
        return line if self.ok else f"{line}; {self.problems()}"


# --------------------------------------------------------------------------------------------- reading files
def one_line(text: str, limit: int = 200) -> str:
    """First sentence of ``text`` on one line, without ANSI codes, at most ``limit`` characters."""
    text = " ".join(_ANSI.sub("", text).split())
    text = re.split(r"(?<=[a-z0-9)])\. (?=[A-Z])", text, maxsplit=1)[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sniff(path: Path) -> str | None:
    """A reason why ``path`` is not a PyTorch file, judged from its first bytes; None if it may be one."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # zip (torch >= 1.6) or legacy pickle
        return None
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights; run `git lfs pull` or download the real file"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return "it is an HTML/XML page (a failed download?); download the file again"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file (Keras?), not a PyTorch file"
    if head.startswith(b"\x08") or head.startswith(b"ONNX"):
        return "it looks like an ONNX/protobuf file, not a PyTorch checkpoint"
    return f"it does not start like a PyTorch file (first bytes {head[:8]!r})"


def zip_damage(path: str | os.PathLike) -> str | None:
    """Why the zip archive ``path`` (a ``torch.save`` file) is damaged, from the CRC-32 of every entry; None if intact.

    ``torch.load`` does not check the CRCs, so flipped bytes inside a tensor would load as changed weights.
    The check reads the file once (about as fast as the disk; see docs/pipeline.md). Files that are not
    readable zip archives are left to ``torch.load``'s own error.

    >>> zip_damage("best.pt")   # None, or e.g. "entry best/data/3 fails its CRC-32 check"
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    with archive:
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, NotImplementedError) as err:
            return f"{type(err).__name__}: {one_line(str(err), 100)}"
    return None if bad is None else f"entry {bad} fails its CRC-32 check"


def _numpy_safe_globals() -> list:
    """numpy's data-only classes, under numpy 2 and numpy 1 names (official nnU-Net files store numpy scalars)."""
    core = getattr(np, "_core", None) or np.core
    objs = [np.ndarray, np.dtype, core.multiarray.scalar, core.multiarray._reconstruct]
    objs += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n != "ObjectDType"]
    aliases = [
        (core.multiarray.scalar, "numpy.core.multiarray.scalar"),
        (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    return objs + aliases


def read_weights_file(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    allow_numpy: bool = False,
    what: str = "weights file",
) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line :class:`InputError` for every way it can fail.

    Distinguishes a missing/empty file, a file that is not a PyTorch file (Git LFS pointer, HTML
    page, garbage), a torn/corrupt one, and one containing pickled Python objects (which could run
    code and is refused). ``allow_numpy`` also accepts numpy arrays/scalars (data, never code).
    """
    path = Path(path)
    ensure_file(path, what)
    not_torch = _sniff(path)
    if not_torch:
        raise InputError(f"{what} {path} is not a PyTorch file: {not_torch}")
    damage = zip_damage(path)
    if damage:
        raise InputError(
            f"{what} {path} is corrupt ({damage}); use an intact copy (the other of best.pt / last.pt, or a backup)"
        )
    allowed = torch.serialization.safe_globals(_numpy_safe_globals()) if allow_numpy else contextlib.nullcontext()
    try:
        with allowed, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4": we report it below
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(_ANSI.sub("", str(err)))
        if found:
            raise InputError(
                f"refusing to load {path}: it contains pickled Python objects ({found.group(1)}), which can run code; "
                "if you trust its source, re-save only its tensors (torch.save(model.state_dict(), ...)) and load that"
            ) from None
        raise InputError(
            f"{what} {path} is corrupt or not a PyTorch file "
            f"({one_line(str(err).split('error:')[-1].split('Check the documentation')[0], 120)}); "
            "use a file written by torch.save"
        ) from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise InputError(
            f"{what} {path} is corrupt or truncated ({type(err).__name__}: {one_line(str(err), 160)}); "
            "use an intact copy (an interrupted copy or download leaves a torn file)"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path} holds a {type(obj).__name__}, expected a dict (state_dict or checkpoint)")
    return obj


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)
    )


def extract_state_dict(obj: Mapping[str, Any], source: str = "weights") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint of any supported layout (see module docstring)."""
    if not isinstance(obj, Mapping):
        raise InputError(f"{source} holds a {type(obj).__name__}, not a state_dict or checkpoint dict")
    if obj.get("format") == "fusionseg" and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    else:
        for key in _CONTAINER_KEYS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        keys = ", ".join(map(str, list(obj)[:8]))
        raise InputError(
            f"{source} holds no state_dict (top-level keys: {keys}); expected tensors or one of the keys "
            f"{', '.join(_CONTAINER_KEYS)}"
        )
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(state_dict: Mapping[str, torch.Tensor], model_keys: set[str] | None = None) -> dict:
    """Remove ``module.`` / ``_orig_mod.`` wrappers' prefixes (unless the model's own keys carry them)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix) and (model_keys is None or key not in model_keys):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def load_pretrained(
    model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, Any], strict: bool = True
) -> LoadReport:
    """Copy weights into ``model`` and report missing / unexpected / mis-shaped keys.

    With ``strict=True`` (default) any mismatch raises :class:`InputError` with a one-line
    summary and the model is left untouched. With ``strict=False`` every tensor whose name and
    shape fit is loaded and the rest is reported (e.g. fine-tuning with another class count).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "state_dict", path_or_state_dict
    else:
        source = str(path_or_state_dict)
        obj = read_weights_file(path_or_state_dict, allow_numpy=True)
    target = model.state_dict()
    state = strip_prefixes(extract_state_dict(obj, source), set(target))
    report = LoadReport(source=Path(source).name if source != "state_dict" else source)
    fitting = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        else:
            fitting[key] = value
    # BatchNorm fills a missing num_batches_tracked itself; every other absent model key is a miss.
    report.missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if strict and not report.ok:
        raise InputError(f"weights {source} do not fit {type(model).__name__}: {report.problems()}{_hint(report)}")
    model.load_state_dict(fitting, strict=False)
    report.loaded = list(fitting)
    return report


def _hint(report: LoadReport) -> str:
    """A fix suggested by the shapes: other out/in channel counts, or another variant."""
    shapes = [(a, b) for _, a, b in report.mismatched if len(a) == len(b)]
    if shapes and len(shapes) == len(report.mismatched) and not (report.missing or report.unexpected):
        if all(a[1:] == b[1:] for a, b in shapes) and len({a[0] for a, _ in shapes}) == 1:
            k = shapes[0][0][0]
            return (
                f" — the file's output layers have {k} channels: set out_channels={k} (--out-channels {k}), "
                "or use strict=False (--no-strict) to keep only the layers that fit"
            )
        if (
            all(len(a) > 1 and a[0] == b[0] and a[2:] == b[2:] for a, b in shapes)
            and len({a[1] for a, _ in shapes}) == 1
        ):
            c = shapes[0][0][1]
            return f" — the file's first layer takes {c} input channel(s): set in_channels={c} (--in-channels {c})"
    return " — is it another model variant or size (e.g. dnet_v1 vs dnet, other dims/depths)? Check --model"
