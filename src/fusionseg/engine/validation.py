"""Validation during training: sliding-window Dice of preprocessed cases.

Example:
    >>> scores = case_dice(model, items, pre, torch.device("cpu"))   # one mean foreground Dice per case
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fusionseg.engine.infer import predict_volume
from fusionseg.engine.metrics import dice_iou

__all__ = ["case_dice", "validation_dice"]


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


@torch.no_grad()
def case_dice(
    model: nn.Module, items: list[dict], pre: dict, device: torch.device, overlap: float = 0.25, amp: bool = False
) -> list[float]:
    """Mean foreground Dice of each item (sliding window on preprocessed ``{"image", "label"}`` items)."""
    scores = []
    num_classes = int(pre["num_classes"])
    for item in items:
        image, label = _plain(item["image"]), _plain(item["label"])[0].long()
        pred = predict_volume(model, image, pre, overlap=overlap, device=device, amp=amp).argmax(0)
        per_class = [dice_iou((pred == c).numpy(), (label == c).numpy())[0] for c in range(1, num_classes)]
        scores.append(float(np.mean(per_class)))
    return scores


def validation_dice(
    model: nn.Module, items: list[dict], pre: dict, device: torch.device, overlap: float = 0.25, amp: bool = False
) -> float:
    """Mean foreground Dice over cases and classes (NaN without cases)."""
    scores = case_dice(model, items, pre, device, overlap, amp)
    return float(np.mean(scores)) if scores else math.nan
