"""What every network satisfies: :class:`SegmentationNet`, and the one input-size rule.

A registered network (``create_model(name, **kwargs)``) has the attributes ``spatial_dims``,
``in_channels``, ``out_channels`` and ``size_multiple`` (every input spatial size must be a multiple of
it), takes (B, in_channels, *S) and returns logits (B, out_channels, *S) — or, with deep supervision,
a tuple of logits, full resolution first. ``model.config = {"name", "kwargs"}`` is recorded by the
registry. Inputs are checked with :func:`check_input_size`; the nearest valid size is
:func:`nearest_valid_size` (:func:`nearest_multiple` per side). The two size-rounding rules
(:func:`nearest_multiple`, :func:`round_up_to_multiple`) live here, once; the integer argument checks
are :func:`fusionseg.layers.check_positive_int` and :func:`fusionseg.layers.int_list`.

Example:
    >>> nearest_valid_size((33, 80, 20), 32)
    (32, 96, 32)
    >>> padded, info = pad_to_multiple(torch.randn(1, 3, 100, 70), 64)
    >>> padded.shape, crop_to(padded, info).shape
    (torch.Size([1, 3, 128, 128]), torch.Size([1, 3, 100, 70]))
"""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.errors import InputError
from fusionseg.layers import check_positive_int, check_spatial_dims

__all__ = [
    "SegmentationNet",
    "check_input_size",
    "crop_to",
    "nearest_multiple",
    "nearest_valid_size",
    "pad_to_multiple",
    "round_up_to_multiple",
]


def nearest_multiple(value: int, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``value`` (halves round up), at least ``multiple``: 33, 32 → 32."""
    m = int(multiple)
    return max(m, (2 * int(value) + m) // (2 * m) * m)


def round_up_to_multiple(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ≥ ``value``: 33, 32 → 64."""
    return -(-int(value) // int(multiple)) * int(multiple)


def nearest_valid_size(sizes: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Each size rounded to its :func:`nearest_multiple` of ``multiple``."""
    return tuple(nearest_multiple(s, multiple) for s in sizes)


def check_input_size(x: torch.Tensor, in_channels: int, spatial_dims: int, multiple: int, name: str) -> None:
    """Raise :class:`~fusionseg.errors.InputError` (a ValueError) unless ``x`` is (B, in_channels, *S) with
    ``spatial_dims`` spatial dims, each a multiple of ``multiple``; the message names the nearest valid size."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        axes = "D, H, W" if spatial_dims == 3 else "H, W"
        raise InputError(
            f"{name} expects input (B, {in_channels}, {axes}) for in_channels={in_channels}, "
            f"spatial_dims={spatial_dims}; got shape {tuple(x.shape)}"
        )
    sizes = tuple(int(s) for s in x.shape[2:])
    if any(s % multiple for s in sizes):
        raise InputError(
            f"{name} needs every spatial size to be a multiple of {multiple}; got {sizes}, nearest valid size "
            f"{nearest_valid_size(sizes, multiple)} (crop or pad the input, e.g. fusionseg.nets.pad_to_multiple, "
            "or use sliding-window inference with that roi size)"
        )


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant", value: float = 0.0):
    """Pad (B, C, *S) at the end of every spatial dim up to a multiple of ``multiple``.

    Returns ``(padded, crop_info)``; :func:`crop_to` undoes it on any (B, K, *S') output.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    spatial = tuple(int(s) for s in x.shape[2:])
    pads = [(-s) % multiple for s in spatial]
    if any(pads):
        flat: list[int] = []
        for p in reversed(pads):
            flat += [0, p]
        x = F.pad(x, flat, mode=mode, value=value) if mode == "constant" else F.pad(x, flat, mode=mode)
    return x, {"spatial": spatial}


def crop_to(y: torch.Tensor, crop_info: dict) -> torch.Tensor:
    """Crop the trailing spatial dims of ``y`` back to ``crop_info["spatial"]`` (from :func:`pad_to_multiple`)."""
    crop: tuple[EllipsisType | slice, ...] = (..., *(slice(0, s) for s in crop_info["spatial"]))
    return y[crop]


class SegmentationNet(nn.Module):
    """Base class of the networks: owns ``in_channels``, ``out_channels``, ``spatial_dims``, ``size_multiple``
    and the input check.

    Subclasses call ``super().__init__(in_channels, out_channels, spatial_dims, size_multiple)`` first
    (it validates them and raises ValueError naming the fix), may set ``self.size_multiple`` later when
    it depends on other arguments, and call :meth:`check_input` at the top of ``forward``.
    ``config`` is set by :func:`fusionseg.nets.registry.create_model`.

    ``spatial_dims`` defaults to 3 in every network and block (as in MONAI); the one exception is
    DS-TransUNet, a 2D network in its paper, whose class and presets default to 2.
    """

    config: dict

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, size_multiple: int = 1) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.size_multiple = check_positive_int("size_multiple", size_multiple)

    def check_input(self, x: torch.Tensor) -> None:
        """:class:`~fusionseg.errors.InputError` naming the fix unless ``x`` fits (see :func:`check_input_size`)."""
        check_input_size(x, self.in_channels, self.spatial_dims, self.size_multiple, type(self).__name__)
