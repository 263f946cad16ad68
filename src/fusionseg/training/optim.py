"""Optimisers and the learning-rate schedule.

Example:
    >>> opt = build_optimizer(model.parameters(), "sgd")            # nnU-Net's SGD: lr 1e-2, Nesterov 0.99
    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lr_lambda(1000))
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fusionseg.errors import InputError

__all__ = ["OPTIMIZERS", "build_optimizer", "poly_lr_lambda"]

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    params,
    name: str = "sgd",
    lr: float | None = None,
    weight_decay: float | None = None,
    momentum: float = 0.99,
) -> torch.optim.Optimizer:
    """SGD (Nesterov, momentum 0.99, lr 1e-2, wd 3e-5; nnU-Net's) or AdamW (lr 1e-3, wd 1e-2); None = default."""
    key = str(name).lower()
    if key == "sgd":
        lr = 1e-2 if lr is None else lr
        wd = 3e-5 if weight_decay is None else weight_decay
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=wd)
    if key == "adamw":
        lr = 1e-3 if lr is None else lr
        wd = 1e-2 if weight_decay is None else weight_decay
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise InputError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def poly_lr_lambda(
    total_steps: int, exponent: float = 0.9, time_fraction: Callable[[], float] | None = None
) -> Callable[[int], float]:
    """LR factor ``(1 - progress)^exponent`` (nnU-Net poly schedule), ``progress = step / total_steps``.

    With a time budget, ``time_fraction()`` (training time used / budget) counts too: the LR then
    reaches 0 at the budget or at the last step, whichever comes first.
    """

    def factor(step: int) -> float:
        progress = step / max(total_steps, 1)
        if time_fraction is not None:
            progress = max(progress, time_fraction())
        return max(1.0 - progress, 0.0) ** exponent

    return factor
