"""Bounded-memory sliding window: blended class scores of an image, one slab of rows at a time.

:func:`blended_slabs` runs exactly the windows of MONAI's ``sliding_window_inference`` over the whole
image (same positions, padding, Gaussian weights, flips for TTA, models of an ensemble), but in the
order of their start along one axis, accumulating into a buffer that only spans the rows still being
written: each window's weighted scores are divided by the Gaussian weight sum of its pass (known from
the window grid alone) as they are added, so a row is final as soon as the last window touching it
has run. Rows are handed out in requested ranges ``[lo, hi)`` (non-decreasing), then dropped. Every
window runs once; memory is the buffer: ``K × (slab rows + window rows) × cross-section`` floats.

The result equals :func:`fusionseg.inference.sliding_window.predict_ensemble` up to float rounding (the division
by the weight sum happens per window instead of once at the end).

Example:
    >>> plan = SlabPlan.build(models, pres, image.shape[1:], overlap=0.5, tta=False)
    >>> for lo, hi, scores in blended_slabs(plan, image, [(0, 40), (38, 80)]):
    ...     labels[lo:hi] = scores.argmax(0)        # scores: (K, hi - lo, *rest) along plan.axis
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fusionseg.errors import InputError
from fusionseg.nets.base import round_up_to_multiple
from fusionseg.nets.registry import model_attribute
from fusionseg.runtime.devices import autocast
from fusionseg.runtime.progress import progress_bar

if TYPE_CHECKING:
    from fusionseg.data.preprocessing import Preprocessing

__all__ = ["SlabPlan", "WindowPass", "blended_slabs", "window_origins", "window_size", "windows_bar"]

SIGMA_SCALE = 0.125  # MONAI's default Gaussian of sliding_window_inference


def window_size(spatial_shape: Sequence[int], patch_size: Sequence[int] | None, size_multiple: int) -> tuple[int, ...]:
    """Sliding-window size: the training patch (or the whole image when none) rounded up to ``size_multiple``."""
    base = patch_size if patch_size else spatial_shape
    if len(base) != len(spatial_shape):
        raise InputError(f"patch size {tuple(base)} does not match a {len(spatial_shape)}-D image")
    return tuple(round_up_to_multiple(s, size_multiple) for s in base)


def window_origins(shape: Sequence[int], roi: Sequence[int], overlap: float, flip: Sequence[int] = ()) -> np.ndarray:
    """(W, D) first voxel of each window of MONAI's sliding window, in image coordinates.

    MONAI pads an image smaller than the window (half before), and with a flip runs its grid on the
    flipped image: origins may then be negative or reach past the image (those voxels read as zero).
    """
    from monai.data.utils import dense_patch_slices

    padded = tuple(max(int(s), int(r)) for s, r in zip(shape, roi))
    before = [(p - int(s)) // 2 for p, s in zip(padded, shape)]
    interval = tuple(r if r == p else max(int(r * (1 - overlap)), 1) for r, p in zip(roi, padded))
    starts = np.array(
        [[s.start for s in window] for window in dense_patch_slices(padded, roi, interval)], dtype=np.int64
    )
    origins = starts - np.asarray(before)
    for d in flip:
        origins[:, d] = int(shape[d]) - starts[:, d] - int(roi[d]) + before[d]
    return origins


@dataclass
class WindowPass:
    """One model under one flip: its windows (sorted by start along the slab axis) and Gaussian weight.

    ``flip`` mirrors the whole image's window grid (MONAI's TTA: a pass over the flipped image);
    ``mirrors`` are flips inside each window whose raw outputs are averaged with the plain one before
    ``activate`` (nnU-Net's TTA: e.g. ``((2,), (3,), (2, 3))`` as batch axes).
    """

    model: nn.Module
    activate: Callable[[torch.Tensor], torch.Tensor]
    roi: tuple[int, ...]
    flip: tuple[int, ...]
    origins: np.ndarray
    weight: torch.Tensor
    done: int = 0
    mirrors: tuple[tuple[int, ...], ...] = ()


@dataclass
class SlabPlan:
    """What :func:`blended_slabs` runs: the passes (models × flips), the slab axis and the class count."""

    passes: list[WindowPass]
    shape: tuple[int, ...]
    axis: int
    num_classes: int
    sw_batch_size: int = 4
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    on_windows: Callable[[int], None] | None = None

    @classmethod
    def build(
        cls,
        models: Sequence[nn.Module],
        pres: Sequence[Preprocessing],
        shape: Sequence[int],
        *,
        overlap: float = 0.5,
        tta: bool = False,
        sw_batch_size: int = 4,
        device: str | torch.device | None = None,
        amp_dtype: torch.dtype | None = None,
        axis: int | None = None,
        num_classes: int | None = None,
    ) -> SlabPlan:
        """Passes of ``models`` (each with its ``pre``'s window) over an image of spatial ``shape``.

        ``axis`` (default: the one with the smallest window rows × cross-section, i.e. the smallest buffer).
        """
        from monai.data.utils import compute_importance_map

        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        shape = tuple(int(s) for s in shape)
        dims = len(shape)
        if device is None:
            param = next(models[0].parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        device = torch.device(device)
        flips = [(), *((d,) for d in range(dims))] if tta else [()]
        passes = []
        for model, pre in zip(models, pres):
            activate = torch.sigmoid if pre.activation == "sigmoid" else (lambda logits: torch.softmax(logits, 1))
            roi = window_size(shape, pre.patch_size, model_attribute(model, "size_multiple"))
            weight = compute_importance_map(roi, mode="gaussian", sigma_scale=SIGMA_SCALE, device=device)
            for flip in flips:
                passes.append(
                    WindowPass(model, activate, roi, flip, window_origins(shape, roi, overlap, flip), weight.flip(flip))
                )
        if axis is None:
            total = math.prod(shape)
            axis = min(range(dims), key=lambda d: max(p.roi[d] for p in passes) * total / shape[d])
        for p in passes:
            p.origins = p.origins[np.argsort(p.origins[:, axis], kind="stable")]
        layout = pres[0].label_layout
        k = layout.out_channels if num_classes is None or layout.has_regions else int(num_classes)
        return cls(passes, shape, int(axis), k, int(sw_batch_size), device, amp_dtype)

    @property
    def windows(self) -> int:
        """Windows to run over the whole image (all passes)."""
        return sum(len(p.origins) for p in self.passes)

    @property
    def halo(self) -> int:
        """Most rows one window spans along the slab axis (the buffer's extra rows)."""
        return max(p.roi[self.axis] for p in self.passes)

    def fit_batch(self, budget: int) -> int:
        """Fewer windows per forward pass when their class scores (K × window floats each) would take more than
        an eighth of ``budget`` bytes (many classes); at least one → the windows per pass now."""
        window = max(math.prod(p.roi) for p in self.passes)
        fits = budget // (8 * 4 * self.num_classes * window)
        self.sw_batch_size = int(max(1, min(self.sw_batch_size, fits)))
        return self.sw_batch_size

    def rows_within(self, budget: int) -> int:
        """Rows per slab (at least 1) whose buffer, halo included, and one copy of the slab fit ``budget`` bytes."""
        cross = math.prod(self.shape) // self.shape[self.axis]
        per_row = self.bytes_per_row() + 4 * self.num_classes * cross
        fixed = (self.halo * 5 // 4) * self.bytes_per_row()  # window rows + the buffer's spare
        return int(max(1, min(self.shape[self.axis], (budget - fixed) // per_row)))

    def ranges(self, rows: int) -> list[tuple[int, int]]:
        """Consecutive ``[lo, hi)`` slabs of ``rows`` rows covering the slab axis."""
        size = self.shape[self.axis]
        return [(lo, min(lo + rows, size)) for lo in range(0, size, rows)]

    def bytes_per_row(self) -> int:
        """Buffer bytes per row along the slab axis (scores of every class + one weight sum per pass)."""
        cross = math.prod(self.shape) // self.shape[self.axis]
        return 4 * cross * (self.num_classes + len(self.passes))


def _clip(origin: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[list[slice], list[slice]]:
    """(slices of the image, slices of the window) where a window at ``origin`` overlaps the image."""
    image, window = [], []
    for o, r, s in zip(origin, size, shape):
        lo, hi = max(int(o), 0), min(int(o) + int(r), int(s))
        image.append(slice(lo, hi))
        window.append(slice(lo - int(o), hi - int(o)))
    return image, window


def _window_input(image: torch.Tensor, origin: Sequence[int], roi: Sequence[int]) -> torch.Tensor:
    """Image content (C, *roi) of a window, zero outside the image (MONAI's constant padding)."""
    src, dst = _clip(origin, roi, image.shape[1:])
    image_part, window_part = (slice(None), *src), (slice(None), *dst)
    if all(d.start == 0 and d.stop == r for d, r in zip(dst, roi)):
        return image[image_part]
    out = image.new_zeros((image.shape[0], *roi))
    out[window_part] = image[image_part]
    return out


class _Buffer:
    """Scores (K, rows, ...) and per-pass weight sums of rows ``[lo, hi)`` along ``axis`` (moved first).

    The rows live in one allocation with a quarter of the window rows to spare: dropping rows only moves
    the start; when the spare is used up the open rows are moved down (row by row) to the beginning.
    """

    def __init__(self, plan: SlabPlan) -> None:
        self.plan, self.lo, self.hi, self.start = plan, 0, 0, 0
        self.spare = max(1, plan.halo // 4)
        self.cross = tuple(s for d, s in enumerate(plan.shape) if d != plan.axis)
        self._scores = torch.zeros((plan.num_classes, 0, *self.cross), device=plan.device)
        self._weights = torch.zeros((len(plan.passes), 0, *self.cross), device=plan.device)

    @property
    def scores(self) -> torch.Tensor:
        return self._scores[:, self.start : self.start + self.hi - self.lo]

    @property
    def weights(self) -> torch.Tensor:
        return self._weights[:, self.start : self.start + self.hi - self.lo]

    def keep_from(self, lo: int) -> None:
        """Drop rows below ``lo`` (final and handed out, or never asked for)."""
        if lo <= self.lo:
            return
        if lo >= self.hi:
            self.start, self.lo, self.hi = 0, lo, lo
            return
        self.start += lo - self.lo
        self.lo = lo

    def _compact(self) -> None:
        """Move the open rows to the beginning of the allocation."""
        for row in range(self.hi - self.lo):  # one row at a time: source and destination never overlap
            self._scores[:, row].copy_(self._scores[:, self.start + row])
            self._weights[:, row].copy_(self._weights[:, self.start + row])
        self.start = 0

    def extend_to(self, hi: int) -> None:
        """Add zero rows up to ``hi``; their weight sums come from every window of each pass touching them."""
        if hi <= self.hi:
            return
        plan, axis, old = self.plan, self.plan.axis, self.hi
        rows = hi - self.lo
        if self.start + rows > self._scores.shape[1]:
            self._compact()
        if rows > self._scores.shape[1]:  # grow (the first slabs only)
            kept, size = self.hi - self.lo, rows + self.spare
            scores = self._scores.new_empty((plan.num_classes, size, *self.cross))
            weights = self._weights.new_empty((len(plan.passes), size, *self.cross))
            scores[:, :kept], weights[:, :kept] = self._scores[:, :kept], self._weights[:, :kept]
            self._scores, self._weights = scores, weights
        fresh = slice(self.start + old - self.lo, self.start + rows)
        self._scores[:, fresh] = 0
        self._weights[:, fresh] = 0
        for i, p in enumerate(plan.passes):
            start, stop = p.origins[:, axis], p.origins[:, axis] + p.roi[axis]
            for origin in p.origins[(start < hi) & (stop > old)]:
                self._add(self._weights[i, fresh], p.weight, origin, old, hi)
        self.hi = hi

    def _add(self, target: torch.Tensor, weight: torch.Tensor, origin: Sequence[int], lo: int, hi: int) -> None:
        """``target`` (rows lo..hi first, then the other axes) += the part of a window's ``weight`` inside it."""
        axis = self.plan.axis
        src, win = _clip(origin, weight.shape, self.plan.shape)
        a_lo, a_hi = max(src[axis].start, lo), min(src[axis].stop, hi)
        if a_lo < a_hi:
            win[axis] = slice(win[axis].start + a_lo - src[axis].start, win[axis].stop - (src[axis].stop - a_hi))
            cross = [s for d, s in enumerate(src) if d != axis]
            region = (slice(a_lo - lo, a_hi - lo), *cross)
            target[region] += weight[tuple(win)].movedim(axis, 0)

    def accumulate(self, pass_index: int, scores: torch.Tensor, origin: Sequence[int], share: float) -> None:
        """Add a window's scores (K, *roi), Gaussian-weighted and divided by its pass's weight sums (in place:
        ``scores`` is consumed)."""
        p = self.plan.passes[pass_index]
        weighted = scores.mul_(p.weight * share)
        axis = self.plan.axis
        src, win = _clip(origin, p.roi, self.plan.shape)
        a_lo, a_hi = max(src[axis].start, self.lo), min(src[axis].stop, self.hi)
        if a_lo >= a_hi:
            return
        win[axis] = slice(win[axis].start + a_lo - src[axis].start, win[axis].stop - (src[axis].stop - a_hi))
        rows = slice(a_lo - self.lo, a_hi - self.lo)
        cross = [s for d, s in enumerate(src) if d != axis]
        window_part, region = (slice(None), *win), (rows, *cross)  # region: axis rows first, then the others
        every_class = (slice(None), *region)
        part = weighted[window_part].movedim(1 + axis, 1)
        self.scores[every_class] += part.div_(self.weights[pass_index][region])


def _run_windows(plan: SlabPlan, image: torch.Tensor, buffer: _Buffer, before: int) -> None:
    """Run, in batches, every window not yet run whose start along the axis is below ``before``."""
    share = 1.0 / len(plan.passes)
    for index, p in enumerate(plan.passes):
        stop = p.done
        while stop < len(p.origins) and p.origins[stop, plan.axis] < before:
            stop += 1
        for first in range(p.done, stop, plan.sw_batch_size):
            origins = p.origins[first : min(first + plan.sw_batch_size, stop)]
            batch = torch.stack([_window_input(image, o, p.roi) for o in origins]).to(plan.device)
            if p.flip:
                batch = torch.flip(batch, tuple(d + 2 for d in p.flip))
            flip = tuple(d + 1 for d in p.flip)
            with autocast(plan.device, plan.amp_dtype):
                logits = _forward(p.model, batch)
                for axes in p.mirrors:
                    logits = logits + torch.flip(_forward(p.model, torch.flip(batch, axes)), axes)
            if p.mirrors:
                logits = logits / (len(p.mirrors) + 1)
            del batch
            for i, origin in enumerate(origins):  # one window's scores at a time: K × window floats
                scores = p.activate(logits[i : i + 1].float())[0]
                buffer.accumulate(index, torch.flip(scores, flip) if flip else scores, origin, share)
            del logits
            if plan.on_windows is not None:
                plan.on_windows(len(origins))
        p.done = stop


def _forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The model's (highest-resolution) output for a batch of windows."""
    logits = model(batch)
    return logits[0] if isinstance(logits, list | tuple) else logits


@torch.no_grad()
def blended_slabs(
    plan: SlabPlan, image: torch.Tensor, ranges: Iterable[tuple[int, int]]
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """For each row range ``[lo, hi)`` along ``plan.axis`` (lo and hi non-decreasing): ``(lo, hi, scores)``.

    ``scores`` (K, *S with hi - lo rows on ``plan.axis``) is valid until the next range is asked for.
    ``image``: the preprocessed image (C, *S) on the CPU.
    """
    if tuple(image.shape[1:]) != plan.shape:
        raise ValueError(f"image {tuple(image.shape[1:])} does not match the plan's shape {plan.shape}")
    models = {id(p.model): p.model for p in plan.passes}
    was_training = {key: m.training for key, m in models.items()}
    for m in models.values():
        m.eval()
    for p in plan.passes:
        p.done = 0
    buffer = _Buffer(plan)
    axis, size = plan.axis, plan.shape[plan.axis]
    try:
        previous = (0, 0)
        for lo, hi in ranges:
            lo, hi = max(int(lo), 0), min(int(hi), size)
            if lo < previous[0] or hi < previous[1] or lo >= hi:
                raise ValueError(f"row ranges must be non-empty and non-decreasing, got {(lo, hi)} after {previous}")
            previous = (lo, hi)
            buffer.keep_from(lo)
            ends = [hi]
            for p in plan.passes:
                starts = p.origins[p.done :, axis]
                if (starts < hi).any():
                    ends.append(min(int(starts[starts < hi].max()) + p.roi[axis], size))
            buffer.extend_to(max(ends))
            _run_windows(plan, image, buffer, hi)
            yield lo, hi, buffer.scores[:, lo - buffer.lo : hi - buffer.lo].movedim(1, 1 + axis)
    finally:
        for key, m in models.items():
            m.train(was_training[key])


@contextlib.contextmanager
def windows_bar(plan: SlabPlan, desc: str, enabled: bool = True) -> Iterator[None]:
    """A terminal bar of ``plan``'s windows (done / total, ETA) while they run; nothing in logs."""
    bar = progress_bar(plan.windows, desc=desc, enabled=enabled)
    plan.on_windows = bar.update if bar is not None else None
    try:
        yield
    finally:
        plan.on_windows = None
        if bar is not None:
            bar.close()
