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

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionseg.errors import InputError

__all__ = ["LoadReport", "extract_state_dict", "load_pretrained", "strip_prefixes"]

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
        from fusionseg.engine.checkpoint import load_checkpoint

        source = str(path_or_state_dict)
        obj = load_checkpoint(path_or_state_dict, allow_numpy=True)
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
                "or use strict=False (--non-strict) to keep only the layers that fit"
            )
        if (
            all(len(a) > 1 and a[0] == b[0] and a[2:] == b[2:] for a, b in shapes)
            and len({a[1] for a, _ in shapes}) == 1
        ):
            c = shapes[0][0][1]
            return f" — the file's first layer takes {c} input channel(s): set in_channels={c} (--in-channels {c})"
    return " — is it another model variant or size (e.g. dnet_v1 vs dnet, other dims/depths)? Check --model"
