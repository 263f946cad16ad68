"""Training losses: Dice + cross-entropy over one output or a deep-supervision tuple.

Example:
    >>> loss = DeepSupervisedDiceCE()
    >>> loss((torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)), torch.randint(0, 3, (2, 1, 8, 8))).ndim
    0
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DeepSupervisedDiceCE", "deep_supervision_weights"]


def deep_supervision_weights(levels: int) -> list[float]:
    """Weights 1, 1/2, 1/4, ... normalised to sum 1 (full resolution first)."""
    raw = [0.5**i for i in range(levels)]
    total = sum(raw)
    return [w / total for w in raw]


class DeepSupervisedDiceCE(nn.Module):
    """MONAI ``DiceCELoss`` (softmax, one-hot target, batch Dice) over one or several outputs.

    A tuple of logits (full resolution first) gets :func:`deep_supervision_weights`; the target is
    resized to each output with nearest-exact interpolation (MONAI ``DeepSupervisionLoss``).
    Logits in a lower precision (autocast) are scored in float32.
    """

    def __init__(self, include_background: bool = False) -> None:
        super().__init__()
        from monai.losses import DeepSupervisionLoss, DiceCELoss

        dice_ce = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=True)
        self.loss = DeepSupervisionLoss(dice_ce, weight_mode="exp")

    def forward(self, outputs: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, list | tuple):
            self.loss.weights = deep_supervision_weights(len(outputs))
            outputs = [o.float() for o in outputs]
        else:
            outputs = outputs.float()
        return self.loss(outputs, target.float())
