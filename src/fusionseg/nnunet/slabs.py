"""nnU-Net's prediction of one case, slab by slab: its windows and export without the whole-case logits.

``nnUNetPredictor`` holds the logits of a whole case on the preprocessed grid (float16) and its export
resamples all of them to the input grid at once (float64 per class), so memory grows with classes ×
voxels. Here the same steps run on one slab of rows along one axis at a time
(:func:`~fusionseg.inference.slab_inference.blended_slabs`):

- windows: nnU-Net's positions (``compute_steps_for_sliding_window`` on the image padded to the patch),
  Gaussian (``compute_gaussian``, σ = patch / 8) and mirroring (all combinations of the trained axes,
  logits averaged inside each window); 2D configurations run slice by slice along the first axis;
- resampling to ``shape_after_cropping_and_before_resampling`` as ``resample_data_or_seg_to_shape``
  with nnU-Net's default ``order=1, order_z=0``: linear along every axis (skimage's ``resize`` with edge
  mode is linear with half-voxel centres, as below), except nearest along the low-resolution axis when
  nnU-Net resamples it separately (``map_coordinates(order=0)``: rounds halves up);
- labels from the label manager (argmax, or regions), written into the uncropped, back-transposed label map.

Labels equal nnU-Net's except where its float16 accumulation decides a near-tie (tests and
``fusionseg bench predict --nnunet``). :meth:`Resampling.from_plans` returns None for plans with another
resampling; :mod:`fusionseg.nnunet.predict` then uses nnU-Net's own export.

Example:
    >>> resampling = Resampling.from_plans(plans_manager, cm, props, data.shape[1:])
    >>> labels = predict_labels(predictor, data, props, resampling, budget=512 << 20)   # shape_before_cropping
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fusionseg.inference.slab_inference import SlabPlan, WindowPass, blended_slabs, windows_bar

__all__ = ["Resampling", "predict_labels", "window_plan"]


@dataclass(frozen=True)
class Resampling:
    """From the preprocessed grid (``source``) to the cropped input grid (``target``), axis by axis.

    ``nearest_axis``: the axis nnU-Net resamples separately with nearest neighbours (None: all linear).
    """

    source: tuple[int, ...]
    target: tuple[int, ...]
    nearest_axis: int | None

    @classmethod
    def from_plans(cls, plans_manager, cm, props: dict, source) -> Resampling | None:
        """nnU-Net's export resampling for this case, or None when the plans ask for one not reproduced here."""
        from nnunetv2.preprocessing.resampling.default_resampling import (
            determine_do_sep_z_and_axis,
            resample_data_or_seg_to_shape,
        )

        target = tuple(int(s) for s in props["shape_after_cropping_and_before_resampling"])
        source = tuple(int(s) for s in source)
        if source == target:
            return cls(source, target, None)
        fn = cm.resampling_fn_probabilities
        kwargs = dict(getattr(fn, "keywords", None) or {})
        func = fn.func if isinstance(fn, functools.partial) else fn
        if func is not resample_data_or_seg_to_shape or kwargs.get("is_seg", False):
            return None
        if int(kwargs.get("order", 3)) != 1 or int(kwargs.get("order_z", 0)) != 0:
            return None
        spacing = [props["spacing"][i] for i in plans_manager.transpose_forward]
        current = list(cm.spacing) if len(cm.spacing) == len(target) else [spacing[0], *cm.spacing]
        threshold = kwargs.get("separate_z_anisotropy_threshold")
        extra = {} if threshold is None else {"separate_z_anisotropy_threshold": threshold}
        separate, axis = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), current, spacing, **extra)
        return cls(source, target, int(axis) if separate else None)

    def source_rows(self, axis: int, lo: int, hi: int) -> tuple[int, int]:
        """Source rows ``[first, stop)`` that target rows ``[lo, hi)`` along ``axis`` read."""
        index, _, upper = self._taps(axis, lo, hi)
        return int(index.min()), int(upper.max()) + 1

    def _taps(self, axis: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower source index, weight of the upper one, upper index) of target rows ``[lo, hi)`` along ``axis``."""
        n, m = self.source[axis], self.target[axis]
        out = np.arange(lo, hi, dtype=np.float64)
        if n == m:
            return out.astype(np.int64), np.zeros_like(out), out.astype(np.int64)
        coords = (out + 0.5) * (n / m) - 0.5
        if axis == self.nearest_axis:
            index = np.clip(np.floor(coords + 0.5), 0, n - 1).astype(np.int64)
            return index, np.zeros_like(out), index
        coords = np.clip(coords, 0.0, n - 1)
        lower = np.floor(coords).astype(np.int64)
        upper = np.minimum(lower + 1, n - 1)
        return lower, coords - lower, upper

    def resample(self, scores: torch.Tensor, axis: int, lo: int, hi: int, first: int) -> torch.Tensor:
        """Scores (K, *source; rows from ``first`` on ``axis``) → (K, *target; rows ``[lo, hi)`` on ``axis``)."""
        out = self._along(scores, axis, lo, hi, first)
        for d in range(len(self.source)):
            if d != axis:
                out = self._along(out, d, 0, self.target[d], 0)
        return out

    def _along(self, x: torch.Tensor, axis: int, lo: int, hi: int, first: int) -> torch.Tensor:
        if self.source[axis] == self.target[axis] and (lo, hi) == (first, first + x.shape[1 + axis]):
            return x
        lower, weight, upper = self._taps(axis, lo, hi)
        dim = 1 + axis
        below = x.index_select(dim, torch.from_numpy(lower - first).to(x.device))
        if axis == self.nearest_axis or not weight.any():
            return below
        above = x.index_select(dim, torch.from_numpy(upper - first).to(x.device))
        shape = [1] * x.dim()
        shape[dim] = len(weight)
        return below.lerp_(above, torch.from_numpy(weight).to(x).reshape(shape))


class _Slices(nn.Module):
    """A 2D network run on (N, C, 1, H, W) windows of a volume's slices → (N, K, 1, H, W)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x[:, :, 0])
        out = out[0] if isinstance(out, list | tuple) else out
        return out.unsqueeze(2)


def window_plan(predictor, shape: tuple[int, ...], axis: int, sw_batch_size: int = 1) -> SlabPlan:
    """nnU-Net's sliding window over a padded image of spatial ``shape`` (all 3 axes) as a :class:`SlabPlan`."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    extra = len(shape) - len(patch)  # 1 for a 2D configuration on a volume of slices
    steps = compute_steps_for_sliding_window(shape[extra:], patch, predictor.tile_step_size)
    origins = np.array([(*lead, *s) for lead in itertools.product(*map(range, shape[:extra])) for s in
                        itertools.product(*steps)], dtype=np.int64)  # fmt: skip
    roi = (1,) * extra + patch
    device = predictor.device
    # nnU-Net's weights are float16 values (compute_gaussian's default), summed here in float32
    weight = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=device).float()
    axes = predictor.allowed_mirroring_axes if predictor.use_mirroring else None
    axes = [int(a) + 2 + extra for a in axes or ()]
    mirrors = tuple(c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r))
    network = _Slices(predictor.network) if extra else predictor.network
    origins = origins[np.argsort(origins[:, axis], kind="stable")]
    pass_ = WindowPass(network, lambda logits: logits, roi, (), origins, weight.reshape(roi), mirrors=mirrors)
    heads = int(predictor.label_manager.num_segmentation_heads)
    return SlabPlan([pass_], tuple(shape), axis, heads, sw_batch_size, torch.device(device), None)


def slab_axis(resampling: Resampling, patch: tuple[int, ...]) -> int:
    """The axis cut into slabs: the one resampled by nearest neighbours, the slices of a 2D configuration, else
    the one with the smallest buffer (window rows × cross-section)."""
    if resampling.nearest_axis is not None:
        return resampling.nearest_axis
    dims = len(resampling.source)
    if len(patch) < dims:
        return 0
    roi = (1,) * (dims - len(patch)) + tuple(patch)
    return min(range(dims), key=lambda d: roi[d] / max(resampling.source[d], 1))


def _thickness(plan: SlabPlan, resampling: Resampling, axis: int, budget: int) -> int:
    """Target rows per slab whose working set (buffer, gathered and resampled scores, labels) fits ``budget``."""
    k, src, tgt = plan.num_classes, resampling.source, resampling.target
    cross_src, cross_tgt = math.prod(src) // src[axis], math.prod(tgt) // tgt[axis]
    window = max(math.prod(p.roi) for p in plan.passes)
    fixed = plan.bytes_per_row() * (plan.halo * 5 // 4 + 2) + 4 * k * window * (plan.sw_batch_size * 2 + 3)
    per_source_row = plan.bytes_per_row() + 4 * k * cross_src * 2
    per_target_row = 4 * k * max(cross_tgt, cross_src) * 3 + 16 * cross_tgt
    per_row = per_target_row + per_source_row * src[axis] / tgt[axis]
    return int(max(1, min(tgt[axis], (budget - fixed) // per_row)))


@torch.no_grad()
def predict_labels(
    predictor, data: torch.Tensor, props: dict, resampling: Resampling, budget: int, sw_batch_size: int = 1,
    bar: str | None = None,
) -> np.ndarray:  # fmt: skip
    """nnU-Net's label map of a preprocessed case ``data`` (C, *S) in the input's array order and shape.

    ``bar``: the case's name for a terminal bar of its windows (none in logs).
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    cm, label_manager = predictor.configuration_manager, predictor.label_manager
    padded, unpad = pad_nd_image(data, cm.patch_size, "constant", {"value": 0}, True, None)
    before = [s.start or 0 for s in unpad[1:]]
    axis = slab_axis(resampling, tuple(cm.patch_size))
    plan = window_plan(predictor, tuple(padded.shape[1:]), axis, sw_batch_size)
    thickness = _thickness(plan, resampling, axis, budget)
    size = resampling.target[axis]
    slabs = [(lo, min(lo + thickness, size)) for lo in range(0, size, thickness)]
    rows = [resampling.source_rows(axis, lo, hi) for lo, hi in slabs]
    labels = np.zeros(props["shape_before_cropping"], dtype=np.uint8 if len(label_manager.foreground_labels) < 255
                      else np.uint16)  # fmt: skip
    box = [slice(int(lo), int(hi)) for lo, hi in props["bbox_used_for_cropping"]]
    cross = [slice(b, b + s) for b, s in zip(before, resampling.source)]
    padded_rows = [(first + before[axis], stop + before[axis]) for first, stop in rows]
    with windows_bar(plan, bar or "", enabled=bar is not None):
        for (lo, hi), (first, _), (_, _, scores) in zip(slabs, rows, blended_slabs(plan, padded, padded_rows)):
            index = [slice(None), *cross]  # classes, then the image inside the padding ...
            index[1 + axis] = slice(None)  # ... but along the slab axis the rows asked for
            slab = resampling.resample(scores[tuple(index)], axis, lo, hi, first)
            target = list(box)
            target[axis] = slice(box[axis].start + lo, box[axis].start + hi)
            segmentation = label_manager.convert_logits_to_segmentation(slab)
            labels[tuple(target)] = torch.as_tensor(segmentation).cpu().numpy()
    return labels.transpose(predictor.plans_manager.transpose_backward)
