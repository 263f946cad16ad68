"""Whole-image sliding window (MONAI's, Gaussian-weighted): class probabilities of one image or an ensemble.

The window is the training patch rounded up to the network's ``size_multiple``; images smaller than it are
padded and cropped back; ``tta`` adds flips along each spatial axis. The reference the slab path
(:mod:`fusionseg.inference.slab_inference`) is tested against.

Example:
    >>> probs = predict_volume(model, image, pre, overlap=0.5)   # image (C, *S) → probs (K, *S)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fusionseg.errors import InputError
from fusionseg.inference.slab_inference import window_size
from fusionseg.nets.registry import model_attribute
from fusionseg.runtime.devices import autocast

if TYPE_CHECKING:
    from fusionseg.data.preprocessing import Preprocessing

__all__ = ["predict_ensemble", "predict_volume"]


def _flips(spatial_dims: int) -> list[tuple[int, ...]]:
    """Identity plus each single spatial-axis flip (dims of a (B, C, *S) tensor)."""
    return [(), *((d + 2,) for d in range(spatial_dims))]


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: torch.Tensor,
    pre: Preprocessing | None = None,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    roi_size: Sequence[int] | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Class (softmax) or region (sigmoid) probabilities of one image.

    Args:
        model: network returning logits (B, K, *S) or a tuple of them (the first is used).
        image: preprocessed image (C, *S).
        pre: the model's preprocessing (its ``patch_size`` sets the window; whole image when None).
        overlap: window overlap fraction in [0, 1).
        sw_batch_size: windows per forward pass.
        tta: average over flips of each spatial axis (1 + spatial_dims passes).
        device: where the network runs (default: the model's device); blending happens there too.
        amp_dtype: autocast dtype of the forward passes (e.g. from
            :func:`~fusionseg.runtime.precision.choose_inference_amp`), or None for float32.
        roi_size: explicit window size (overrides ``pre``); rounded up to ``model.size_multiple``.
        activation: ``"softmax"`` or ``"sigmoid"`` (default: ``pre.activation``, else softmax).

    Returns:
        float32 probabilities (K, *S) on the CPU.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim < 3:
        raise InputError(f"predict_volume expects an image (C, *S) with 2 or 3 spatial dims, got {tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    activation = activation or (pre.activation if pre is not None else "softmax")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    activate = torch.sigmoid if activation == "sigmoid" else (lambda logits: torch.softmax(logits, 1))
    spatial = tuple(image.shape[1:])
    multiple = model_attribute(model, "size_multiple")
    patch = roi_size if roi_size is not None else (pre.patch_size if pre is not None else None)
    roi = window_size(spatial, patch, multiple)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp_dtype):
            out = model(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return activate(out.float())

    x = image[None].float().to(device)
    flips = _flips(len(spatial)) if tta else [()]
    probs: torch.Tensor | None = None
    try:
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            blended = sliding_window_inference(
                xi, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian", device=device, sw_device=device
            )
            p = torch.as_tensor(blended)  # drop MetaTensor
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs + p
    finally:
        model.train(was_training)
    assert probs is not None  # flips holds at least the unflipped pass
    return (probs / len(flips))[0].float().cpu()


def predict_ensemble(
    models: Sequence[nn.Module], pres: Sequence[Preprocessing], image: torch.Tensor, **kwargs
) -> torch.Tensor:
    """Mean of :func:`predict_volume` over ``models`` (each with its own window) → probabilities (K, *S)."""
    total: torch.Tensor | None = None
    for model, pre in zip(models, pres):
        probs = predict_volume(model, image, pre, **kwargs)
        total = probs if total is None else total.add_(probs)
    if total is None:
        raise ValueError("predict_ensemble needs at least one model and its preprocessing dict")
    return total / len(models) if len(models) > 1 else total
