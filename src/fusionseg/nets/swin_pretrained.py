"""Load ImageNet Swin v1 weights (official checkpoint format, local file) into a :class:`SwinEncoder`.

No download: pass the path of e.g. ``swin_base_patch4_window7_224_22k.pth`` (main DS-TransUNet
branch) or ``swin_tiny_patch4_window7_224.pth`` (second branch). The file may hold
``{"model": state_dict}``, ``{"state_dict": ...}`` or a plain state_dict (``module.`` /
``backbone.`` prefixes are stripped). Every tensor is accounted for in a :class:`SwinLoadReport`:

- same name and shape → loaded;
- adapted → loaded after a documented change: the 4×4 patch kernel resized to the 8×8 kernel of
  the patch-8 branch (bilinear, scaled by 16/64 so a flat image gives the same response; the
  original left it random), 2D kernels inflated to 3D (repeated over depth / depth), other input
  channel counts (summed for 1 channel, else tiled and rescaled), a relative position bias table
  of another 2D window size (bicubic);
- skipped, with the reason (classifier ``head``, the classifier's final ``norm``, the
  ``attn_mask`` / ``relative_position_index`` buffers recomputed here, shapes that do not fit);
- missing in the file → kept at their initial values, with the reason (``norm0..norm3``).

Example:
    >>> report = load_swin_pretrained(model.encoder2, "swin_tiny_patch4_window7_224.pth")
    >>> print(report)  # loaded / adapted / skipped / missing, one line per tensor group
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fusionseg.errors import InputError
from fusionseg.nets.swin import SwinEncoder

__all__ = [
    "PATCH_EMBED_MODES",
    "PRETRAINED_ENV",
    "SwinLoadReport",
    "load_pretrained_encoders",
    "load_swin_pretrained",
    "parse_pretrained",
    "read_swin_state_dict",
]

# Environment variable the nnU-Net trainers read for --pretrained (nnUNetv2_train has no such option).
PRETRAINED_ENV = "FUSIONSEG_PRETRAINED"

PATCH_EMBED_MODES = ("resize", "skip")
_PREFIXES = ("module.", "backbone.")


@dataclass
class SwinLoadReport:
    """What :func:`load_swin_pretrained` did with every tensor.

    ``loaded``: encoder keys copied as they are; ``adapted``: encoder key → how it was changed;
    ``skipped``: checkpoint key → why it was not used; ``missing``: encoder key left at its
    initial value → why.
    """

    source: str = ""
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def num_loaded(self) -> int:
        return len(self.loaded) + len(self.adapted)

    def __str__(self) -> str:
        lines = [
            f"Swin weights from {self.source or '<state_dict>'}: {len(self.loaded)} loaded, {len(self.adapted)} "
            f"adapted, {len(self.skipped)} skipped, {len(self.missing)} left at init"
        ]
        lines += [f"  adapted {k}: {why}" for k, why in self.adapted.items()]
        lines += _grouped("skipped", self.skipped)
        lines += _grouped("left at init", self.missing)
        return "\n".join(lines)


def _grouped(label: str, items: dict[str, str]) -> list[str]:
    """One line per reason, listing the keys with block indices collapsed (``layers.*.blocks.*``)."""
    by_reason: dict[str, list[str]] = {}
    for key, why in items.items():
        pattern = re.sub(r"\.\d+\.", ".*.", re.sub(r"\.\d+\.", ".*.", key))
        names = by_reason.setdefault(why, [])
        if pattern not in names:
            names.append(pattern)
    return [f"  {label} {', '.join(names)}: {why}" for why, names in by_reason.items()]


def read_swin_state_dict(source: str | Path | dict) -> dict[str, torch.Tensor]:
    """The tensors of an official Swin checkpoint file (or dict), prefixes stripped."""
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"Swin checkpoint {path} not found; download it yourself and pass its local path")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(
                f"cannot read Swin checkpoint {path} with weights_only=True ({type(exc).__name__}); "
                "re-save it as a plain state_dict with torch.save(ckpt['model'], path)"
            ) from exc
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("Swin checkpoint must be a state_dict or a dict with a 'model' state_dict")
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _adapt_patch_kernel(w: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, str]:
    """Resize a patch-embedding kernel (O, C, *k) to ``shape`` keeping its response to flat input."""
    notes = []
    if w.shape[1] != shape[1]:  # input channels
        c_old, c_new = w.shape[1], shape[1]
        if c_new == 1:
            w = w.sum(1, keepdim=True)
            notes.append(f"summed {c_old} input channels into 1")
        else:
            w = w.repeat(1, math.ceil(c_new / c_old), *([1] * (w.ndim - 2)))[:, :c_new] * (c_old / c_new)
            notes.append(f"tiled {c_old} input channels to {c_new} (scaled {c_old}/{c_new})")
    kernel_new = tuple(shape[2:])
    if w.ndim == 4 and len(kernel_new) == 3:  # 2D kernel → 3D: resize in-plane, repeat over depth
        plane = kernel_new[1:]
        if tuple(w.shape[2:]) != plane:
            w = F.interpolate(w, size=plane, mode="bilinear", align_corners=False) * (
                math.prod(w.shape[2:]) / math.prod(plane)
            )
        w = w.unsqueeze(2).repeat(1, 1, kernel_new[0], 1, 1) / kernel_new[0]
        notes.append(f"inflated the 2D kernel to {kernel_new} (repeated over depth / {kernel_new[0]})")
    elif tuple(w.shape[2:]) != kernel_new:
        old = tuple(w.shape[2:])
        mode = "bilinear" if w.ndim == 4 else "trilinear"
        w = F.interpolate(w, size=kernel_new, mode=mode, align_corners=False) * (math.prod(old) / math.prod(kernel_new))
        notes.append(f"resized kernel {old} → {kernel_new} ({mode}, scaled {math.prod(old)}/{math.prod(kernel_new)})")
    return w, "; ".join(notes)


def _adapt_bias_table(t: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """Bicubic resize of a 2D relative position bias table ((2w-1)², heads); None when impossible."""
    if t.shape[1] != shape[1]:
        return None
    side_old, side_new = math.isqrt(t.shape[0]), math.isqrt(shape[0])
    if side_old**2 != t.shape[0] or side_new**2 != shape[0]:
        return None  # not a square 2D table (3D windows)
    grid = t.T.reshape(1, t.shape[1], side_old, side_old)
    grid = F.interpolate(grid, size=(side_new, side_new), mode="bicubic", align_corners=False)
    return grid.reshape(t.shape[1], -1).T.contiguous()


def _skip_reason(key: str) -> str | None:
    if key.startswith("head."):
        return "ImageNet classifier head (not part of the encoder)"
    if key.startswith("norm.") or key == "norm":
        return "final norm of the classifier; the encoder normalises each stage with norm0..norm3"
    if key.endswith("attn_mask"):
        return "buffer, recomputed for each input size"
    if key.endswith("relative_position_index"):
        return "buffer, recomputed from the window size"
    return None


@torch.no_grad()
def load_swin_pretrained(
    encoder: SwinEncoder, source: str | Path | dict, patch_embed: str = "resize"
) -> SwinLoadReport:
    """Copy ImageNet Swin weights from ``source`` (path or state_dict) into ``encoder``.

    Args:
        encoder: the encoder to fill (e.g. ``model.encoder`` or ``model.encoder2``).
        source: local checkpoint path in the official Swin format, or an already loaded dict.
        patch_embed: "resize" (adapt a patch kernel of another size/channels/dims) or "skip"
            (leave it at init, as the original did for the patch-8 branch).

    Returns:
        a :class:`SwinLoadReport`; nothing is loaded silently or dropped without a reason.
    """
    if patch_embed not in PATCH_EMBED_MODES:
        raise ValueError(f"patch_embed must be one of {PATCH_EMBED_MODES}, got {patch_embed!r}")
    ckpt = read_swin_state_dict(source)
    report = SwinLoadReport(source="" if isinstance(source, dict) else str(source))
    target = encoder.state_dict()
    for key, value in ckpt.items():
        reason = _skip_reason(key)
        if reason is not None:
            report.skipped[key] = reason
            continue
        if key not in target:
            report.skipped[key] = "no tensor of this name in the encoder (e.g. a deeper stage than this preset)"
            continue
        dest = target[key]
        if value.shape == dest.shape:
            dest.copy_(value)
            report.loaded.append(key)
            continue
        if key == "patch_embed.proj.weight" and value.ndim >= 4 and value.shape[0] == dest.shape[0]:
            if patch_embed == "skip":
                report.skipped[key] = f"patch kernel {tuple(value.shape)} does not fit {tuple(dest.shape)} (skip mode)"
                continue
            new, how = _adapt_patch_kernel(value, dest.shape)
            dest.copy_(new)
            report.adapted[key] = how
            continue
        if key.endswith("relative_position_bias_table"):
            table = _adapt_bias_table(value, dest.shape)
            if table is not None:
                dest.copy_(table)
                report.adapted[key] = f"bias table {tuple(value.shape)} → {tuple(dest.shape)} (bicubic)"
                continue
        report.skipped[key] = f"shape {tuple(value.shape)} does not fit the encoder's {tuple(dest.shape)}"
    for key in target:
        if key in ckpt or key.endswith("relative_position_index"):
            continue
        if re.fullmatch(r"norm\d+\.(weight|bias)", key):
            report.missing[key] = "per-stage output norm, not in ImageNet Swin; kept at init (as in the original)"
        else:
            report.missing[key] = "not in the checkpoint; kept at init"
    for key in report.skipped:
        if key in target and not key.endswith("relative_position_index"):
            report.missing[key] = "checkpoint tensor skipped (see above); kept at init"
    return report


def parse_pretrained(text: str | Path | list | tuple | None) -> tuple[Path, ...] | None:
    """``"MAIN[,SECOND]"`` (or a list of paths) → checkpoint paths, one per encoder in order; None when empty."""
    if text is None:
        return None
    parts = [str(p) for p in text] if isinstance(text, list | tuple) else str(text).split(",")
    paths = tuple(Path(p.strip()) for p in parts if p.strip())
    return paths or None


def load_pretrained_encoders(model: torch.nn.Module, paths: tuple[Path, ...] | list[Path]) -> str:
    """Load local ImageNet Swin checkpoints into the encoders of ``model`` → one summary line.

    ``paths``: the main encoder's checkpoint, then optionally the second encoder's (DS-TransUNet:
    Swin-B for ``encoder``, Swin-T for ``encoder2``). Checkpoints load with ``weights_only=True``
    (pickled code is refused). InputError for a network without a pretrained encoder or a bad file.

    Example:
        >>> load_pretrained_encoders(model, [Path("swin_base_patch4_window7_224_22k.pth")])
        'pretrained encoder ← swin_base...pth: 327 matched (2 adapted), 4 missing, 3 skipped'
    """
    loader = getattr(model, "load_pretrained_swin", None)
    name = (getattr(model, "config", None) or {}).get("name", type(model).__name__)
    if loader is None:
        raise InputError(
            f"--pretrained loads ImageNet Swin encoders; {name} has none (use ds_transunet or ds_transunet_small)"
        )
    if not 1 <= len(paths) <= 2:
        raise InputError(f"--pretrained takes MAIN[,SECOND] checkpoint paths, got {len(paths)}")
    reports = loader(*paths)
    return "; ".join(
        f"pretrained {encoder} ← {Path(report.source).name}: {report.num_loaded} matched ({len(report.adapted)} "
        f"adapted), {len(report.missing)} missing, {len(report.skipped)} skipped"
        for encoder, report in reports.items()
    )
