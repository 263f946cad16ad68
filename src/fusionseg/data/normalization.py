"""Intensity normalisation per channel, chosen by dataset.json's ``channel_names`` as nnU-Net v2 does.

=================================== ================ ===========================================================
channel name (case-insensitive)     scheme           per image x of that channel
=================================== ================ ===========================================================
``CT``                              ``ct``           ``(clip(x, p0.5, p99.5) - mean) / std``, all four from the
                                                     training foreground (label > 0, ignore label excluded)
``noNorm``                          ``noNorm``       ``x``
``rescale_to_0_1`` (``rescale_0_1``) ``rescale_to_0_1`` ``(x - min x) / (max x - min x)``
``rgb_to_0_1``                      ``rgb_to_0_1``   ``x / 255`` (values must lie in 0..255)
anything else (``zscore``, ``T1``,  ``zscore``       ``(x - mean) / std`` over the image — or, with
``R``, ...)                                          ``use_mask``, over the non-zero mask only (outside stays 0)
=================================== ================ ===========================================================

The non-zero mask is nnU-Net's: voxels non-zero in any channel, holes filled. z-score channels use it
when cropping the training images to the bounding box of that mask shrinks them, by median, to
less than 3/4 of their size (skull-stripped MRI, BraTS), or when dataset.json says
``"use_mask_for_norm": true`` (nnU-Net's ``determine_whether_to_use_mask_for_norm``). ``std`` is the
population standard deviation, floored at 1e-8. Normalisation runs after reorientation and
resampling (nnU-Net normalises before resampling; the difference is interpolation at mask edges).

Example:
    >>> scheme_for_channel("T1"), scheme_for_channel("CT"), scheme_for_channel("noNorm")
    ('zscore', 'ct', 'noNorm')
    >>> normalise(image, [ChannelNormalisation("zscore", use_mask=True)])   # image (C, *S) tensor
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from fusionseg.errors import InputError

__all__ = [
    "CT_PERCENTILES",
    "MASK_SIZE_THRESHOLD",
    "SCHEMES",
    "ChannelNormalisation",
    "nonzero_box",
    "nonzero_mask",
    "normalise",
    "relative_size_after_cropping",
    "scheme_for_channel",
    "use_mask_for_norm",
]

SCHEMES = ("ct", "zscore", "noNorm", "rescale_to_0_1", "rgb_to_0_1")
_SCHEME_NAMES = (*SCHEMES, "channel")  # "channel": a z-score without mask, in the oldest checkpoints
CT_PERCENTILES = (0.5, 99.5)
MASK_SIZE_THRESHOLD = 0.75  # nnU-Net: median relative size after cropping to the non-zero box < 3/4 → use the mask
_ALIASES = {
    "ct": "ct",
    "nonorm": "noNorm",
    "rescale_0_1": "rescale_to_0_1",
    "rescale_to_0_1": "rescale_to_0_1",
    "rgb_to_0_1": "rgb_to_0_1",
    "zscore": "zscore",
}


@dataclass(frozen=True)
class ChannelNormalisation:
    """How one input channel is normalised (:func:`normalise`; one per channel in the preprocessing).

    Attributes:
        scheme: ``"ct"``, ``"zscore"``, ``"noNorm"``, ``"rescale_to_0_1"``, ``"rgb_to_0_1"`` (``"channel"``:
            a z-score without mask, in the oldest checkpoints).
        clip, mean, std: CT only: the training foreground's 0.5/99.5 percentiles, mean and std (None
            until :func:`~fusionseg.data.plan.plan_dataset` has measured them).
        use_mask: z-score only: inside the non-zero mask (None: not recorded, i.e. no mask).
    """

    scheme: str
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    use_mask: bool | None = None

    def __post_init__(self) -> None:
        if self.scheme not in _SCHEME_NAMES:
            raise ValueError(f"scheme {self.scheme!r} is none of {', '.join(SCHEMES)}")

    def to_dict(self) -> dict:
        """``{"scheme": "ct", "clip": [lo, hi], "mean", "std"}``, ``{"scheme": "zscore", "use_mask": bool}``, ..."""
        out: dict[str, Any] = {"scheme": self.scheme}
        if self.clip is not None:
            out["clip"] = list(self.clip)
        if self.mean is not None:
            out["mean"] = self.mean
        if self.std is not None:
            out["std"] = self.std
        if self.use_mask is not None:
            out["use_mask"] = self.use_mask
        return out

    @classmethod
    def from_dict(cls, d: object, where: str = "preprocessing.channel_normalisation") -> ChannelNormalisation:
        """One stored entry of ``channel_normalisation``; InputError naming ``where`` for anything else."""

        def bad(key: str, value: object, expected: str) -> InputError:
            shown = " ".join(repr(value).split())
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return InputError(f"{where}{key} is {shown}, expected {expected}")

        if not isinstance(d, Mapping) or d.get("scheme") not in _SCHEME_NAMES:
            raise bad("", d, f"a mapping with a scheme among {', '.join(SCHEMES)}")
        unknown = sorted(str(k) for k in d if k not in ("scheme", "clip", "mean", "std", "use_mask"))
        if unknown:
            raise bad("", d, f"only scheme, clip, mean, std and use_mask (not {', '.join(unknown)})")
        clip, mean, std, use_mask = d.get("clip"), d.get("mean"), d.get("std"), d.get("use_mask")
        if clip is not None and not (isinstance(clip, list | tuple) and len(clip) == 2 and all(map(_finite, clip))):
            raise bad(".clip", clip, "two numbers [low, high]")
        for key, value in (("mean", mean), ("std", std)):
            if value is not None and not _finite(value):
                raise bad(f".{key}", value, "a number")
        if use_mask is not None and not isinstance(use_mask, bool):
            raise bad(".use_mask", use_mask, "true or false")
        if d["scheme"] == "ct" and (clip is None or mean is None or std is None):
            raise bad("", d, 'clip, mean and std for a "ct" channel (measured by `fusionseg plan`)')
        return cls(str(d["scheme"]), None if clip is None else (clip[0], clip[1]), mean, std, use_mask)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def scheme_for_channel(name: str) -> str:
    """Normalisation scheme of a ``channel_names`` entry (see the module table); unknown names → ``zscore``."""
    return _ALIASES.get(str(name).strip().lower(), "zscore")


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """(C, *S) image → bool (*S): non-zero in any channel, enclosed holes filled."""
    mask = np.any(np.asarray(image) != 0, axis=0)
    return ndimage.binary_fill_holes(mask)


def nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the voxels non-zero in any channel of a (C, *S) image (the whole image if all zero)."""
    mask = np.any(np.asarray(image) != 0, axis=0)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    extent = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != d))) for d in range(mask.ndim)]
    return tuple(slice(int(e[0]), int(e[-1]) + 1) for e in extent)


def relative_size_after_cropping(image: np.ndarray) -> float:
    """Voxels of the bounding box of the non-zero region / all voxels (1.0 for an all-zero image)."""
    box = nonzero_box(image)
    size = np.prod(np.asarray(image).shape[1:], dtype=np.float64)
    return float(np.prod([b.stop - b.start for b in box], dtype=np.float64) / size)


def use_mask_for_norm(relative_sizes: Sequence[float], forced: bool | None = None) -> bool:
    """nnU-Net's rule: ``forced`` (dataset.json ``use_mask_for_norm``) or median relative size < 3/4."""
    if forced:
        return True
    return bool(relative_sizes) and float(np.median(relative_sizes)) < MASK_SIZE_THRESHOLD


def _zscore(x: torch.Tensor, mask: torch.Tensor | None) -> None:
    if mask is not None and bool(mask.any()):
        values = x[mask]
        std, mean = torch.std_mean(values, unbiased=False)
        x[mask] = (values - mean) / std.clamp_min(1e-8)
        return
    std, mean = torch.std_mean(x, unbiased=False)
    x.sub_(mean).div_(std.clamp_min(1e-8))


def normalise(image: torch.Tensor, specs: Sequence[ChannelNormalisation]) -> torch.Tensor:
    """Normalise each channel of ``image`` (C, *S) by its :class:`ChannelNormalisation`; a new float32 tensor."""
    if image.shape[0] != len(specs):
        raise InputError(f"image has {image.shape[0]} channels but the preprocessing expects {len(specs)}")
    out = image.as_subclass(torch.Tensor).float().clone()
    mask = None
    if any(s.scheme == "zscore" and s.use_mask for s in specs):  # from the raw channels, before any change
        mask = torch.from_numpy(nonzero_mask(out.numpy()))
    for c, spec in enumerate(specs):
        x = out[c]
        if spec.scheme == "ct":
            if spec.clip is None or spec.mean is None or spec.std is None:
                raise ValueError(f'channel {c} is "ct" without its statistics; plan the dataset (plan_dataset)')
            x.clamp_(*spec.clip).sub_(spec.mean).div_(max(spec.std, 1e-8))
        elif spec.scheme in ("zscore", "channel"):
            _zscore(x, mask if spec.use_mask else None)
        elif spec.scheme == "rescale_to_0_1":
            x.sub_(x.min()).div_(x.max().clamp_min(1e-8))
        elif spec.scheme == "rgb_to_0_1":
            if x.numel() and (float(x.min()) < 0 or float(x.max()) > 255):
                raise InputError(
                    f"channel {c} holds values {float(x.min()):g}..{float(x.max()):g}, outside 0..255 of "
                    '"rgb_to_0_1"; store 8-bit colour images or name the channel "zscore" in dataset.json'
                )
            x.div_(255.0)
    return out
