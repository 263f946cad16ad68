"""Label map of one case on its input grid, slab by slab, within a memory budget (``fusionseg predict``).

The output (input-grid) volume is cut into slabs along the axis that maps onto the slab axis of the
:class:`~fusionseg.inference.slab_inference.SlabPlan`; for each slab the preprocessed rows it samples
(one more on each side for linear interpolation) are blended by
:func:`~fusionseg.inference.slab_inference.blended_slabs`, resampled to the slab's part of the input grid
exactly as ``data.save_prediction`` resamples the whole map, turned into labels (argmax, or regions
painted in ``regions_class_order``) and written into the label array. Probabilities, when asked for,
go slab by slab into an on-disk array. The K-class map of the whole case never exists.

Example:
    >>> plan = SlabPlan.build([model], [pre], image.shape[1:])
    >>> layout = slab_layout(plan, meta, budget=512 << 20)
    >>> labels = predict_label_map(plan, image, meta, layout)     # (*input shape) uint8
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fusionseg.data.io import label_dtype
from fusionseg.data.labels import regions_to_labels
from fusionseg.data.transforms import input_grid_mapping, regions_class_order, resample_to_input_grid
from fusionseg.inference.slab_inference import SlabPlan, blended_slabs
from fusionseg.runtime.memory_budget import format_bytes

__all__ = ["SlabLayout", "predict_label_map", "slab_layout"]


@dataclass(frozen=True)
class SlabLayout:
    """Slabs of the output grid: ``slabs`` = [(out_lo, out_hi, rows_lo, rows_hi)] in the order they run."""

    axis: int  # output (input-grid) axis cut into slabs
    thickness: int  # output rows per slab
    slabs: list[tuple[int, int, int, int]]
    budget: int
    estimate: int  # working-set bytes of the largest slab

    def describe(self, shape: tuple[int, ...]) -> str:
        return (
            f"memory budget {format_bytes(self.budget)}: {len(self.slabs)} slab(s) of {self.thickness} of "
            f"{shape[self.axis]} rows along axis {self.axis} (working set about {format_bytes(self.estimate)}"
            + ("; one row is the least, above the budget)" if self.estimate > self.budget else ")")
        )


def _rows(mapping: np.ndarray | None, axis: int, out_shape: tuple[int, ...], lo: int, hi: int, size: int, b: int):
    """Preprocessed rows [lo, hi) along ``b`` that the output rows [lo, hi) along ``axis`` interpolate from."""
    if mapping is None:
        return lo, hi
    dims = len(out_shape)
    ranges = [(0, s - 1) for s in out_shape]
    ranges[axis] = (lo, hi - 1)
    corners = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(dims, -1)
    coords = mapping[b, :dims] @ corners + mapping[b, dims]
    return max(0, math.floor(coords.min()) - 1), min(size, math.floor(coords.max()) + 2)


def slab_layout(plan: SlabPlan, meta: dict, budget: int) -> SlabLayout:
    """Slab thickness on the output grid that keeps the working set within ``budget`` bytes (at least one row)."""
    mapping = input_grid_mapping(meta)
    out_shape = tuple(int(s) for s in meta["original_shape"])
    b = plan.axis
    axis = b if mapping is None else int(np.argmax(np.abs(mapping[b, : len(out_shape)])))
    scale = 1.0 if mapping is None else float(np.linalg.norm(mapping[b, : len(out_shape)]))
    k, cross_out = plan.num_classes, math.prod(out_shape) // out_shape[axis]
    window = max(math.prod(p.roi) for p in plan.passes)
    fixed = plan.bytes_per_row() * (plan.halo * 5 // 4 + 2) + 4 * k * window * (
        plan.sw_batch_size + 3
    )  # + logits, scores
    per_processed_row = plan.bytes_per_row() + 4 * k * math.prod(plan.shape) // plan.shape[b]  # + resampling input
    per_out_row = cross_out * (4 * k * 2 + 4 * (len(out_shape) + 3) + 8)  # resampled, argmax, grid, labels
    per_row = per_out_row + scale * per_processed_row
    thickness = int(max(1, min(out_shape[axis], (budget - fixed) // per_row)))
    slabs = []
    for lo in range(0, out_shape[axis], thickness):
        hi = min(lo + thickness, out_shape[axis])
        slabs.append((lo, hi, *_rows(mapping, axis, out_shape, lo, hi, plan.shape[b], b)))
    slabs.sort(key=lambda s: (s[2], s[3]))
    return SlabLayout(axis, thickness, slabs, int(budget), int(fixed + per_row * thickness))


def _translated(affine: np.ndarray, axis: int, offset: int) -> np.ndarray:
    shift = np.eye(affine.shape[0])
    shift[axis, -1] = offset
    return np.asarray(affine, dtype=np.float64) @ shift


def predict_label_map(
    plan: SlabPlan,
    image: torch.Tensor,
    meta: dict,
    layout: SlabLayout,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Label map (*input shape) of ``image`` (preprocessed, (C, *S)); ``probabilities`` (K, *input shape), an
    on-disk array, is filled slab by slab when given. Regions are painted in their ``regions_class_order``."""
    mapping = input_grid_mapping(meta)
    out_shape = tuple(int(s) for s in meta["original_shape"])
    order = regions_class_order(meta)
    top = max(int(c) for c in order) if order else plan.num_classes - 1
    labels: np.ndarray = np.zeros(out_shape, dtype=label_dtype(top))
    ranges = [(rows_lo, rows_hi) for _, _, rows_lo, rows_hi in layout.slabs]
    for (lo, hi, rows_lo, _), (_, _, scores) in zip(layout.slabs, blended_slabs(plan, image, ranges)):
        if mapping is not None:
            shape = list(out_shape)
            shape[layout.axis] = hi - lo
            scores = resample_to_input_grid(
                scores.cpu(),
                _translated(meta["affine"], plan.axis, rows_lo),
                _translated(meta["original_affine"], layout.axis, lo),
                shape,
            )
        scores = scores.cpu()
        index = [slice(None)] * len(out_shape)
        index[layout.axis] = slice(lo, hi)
        slab_labels = regions_to_labels(scores, order) if order else scores.argmax(0)
        labels[tuple(index)] = slab_labels.numpy()
        if probabilities is not None:
            every_class = (slice(None), *index)
            probabilities[every_class] = scores.numpy()
    return labels
