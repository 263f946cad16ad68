"""Memory a training step needs, estimated without allocating it: refuse sizes that cannot fit in one line.

The network is built on PyTorch's ``meta`` device (shapes only, no storage) and run once on a meta batch
of the training shape; the outputs of its leaf modules (what autograd keeps for the backward pass) and its
weights (× 4: weights, gradients, two optimizer moments) give the estimate. Building and running on meta
takes milliseconds even for sizes that would need terabytes.

Example:
    >>> need = training_memory(lambda: create_model("unet", spatial_dims=2), (2, 1, 96, 96))
    >>> need.total > 0
    True
    >>> check_fits(need, "cpu", "--batch-size 2, --patch-size 96,96")   # InputError when it cannot fit
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fusionseg.errors import InputError
from fusionseg.runtime.memory_budget import format_bytes

__all__ = ["MemoryNeed", "check_fits", "device_memory", "training_memory"]

OPTIMIZER_COPIES = 4  # weights, gradients and two moments (AdamW; SGD with momentum keeps one)


@dataclass(frozen=True)
class MemoryNeed:
    """Estimated bytes of one training step: weights (with gradients and optimizer state) and activations."""

    weights: int
    activations: int | None  # None when the network does not run on the meta device

    @property
    def total(self) -> int:
        return self.weights + (self.activations or 0)


def training_memory(build: Callable[[], nn.Module], shape: Sequence[int]) -> MemoryNeed | None:
    """Estimate for a network made by ``build()`` trained on batches of ``shape`` (B, C, *S); None if unknown.

    ``build`` runs under ``torch.device("meta")``; a network that cannot be built there gives None. The
    spatial sizes are rounded up to the network's ``size_multiple`` first, as training does.
    """
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # a constructor that needs real data: no estimate, the run goes on as before
        return None
    weights = OPTIMIZER_COPIES * sum(p.numel() * p.element_size() for p in model.parameters())
    total = [0]

    def count(_module, _inputs, output) -> None:
        for tensor in output if isinstance(output, list | tuple) else (output,):
            if isinstance(tensor, torch.Tensor):
                total[0] += tensor.numel() * tensor.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        model.train()
        multiple = int(getattr(model, "size_multiple", 1) or 1)
        spatial = [-(-int(s) // multiple) * multiple for s in shape[2:]]
        model(torch.empty((int(shape[0]), int(shape[1]), *spatial), device="meta"))
        activations = total[0]
    except Exception:  # an op without a meta kernel: weights only
        activations = None
    finally:
        for hook in hooks:
            hook.remove()
    return MemoryNeed(weights, activations)


def device_memory(device: torch.device | str) -> int | None:
    """Total memory of ``device`` in bytes (CUDA: the GPU's; CPU: physical RAM); None when unknown."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "cpu":
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None
    return None


def check_fits(need: MemoryNeed | None, device: torch.device | str, sizes: str, step: str = "training step") -> None:
    """:class:`InputError` with the estimate when ``need`` exceeds the whole memory of ``device``.

    ``step`` names what needs it in the message (an export traces one forward pass: the estimate is an upper bound).
    """
    available = device_memory(device)
    if need is None or available is None or need.total <= available:
        return
    acts = "unknown" if need.activations is None else format_bytes(need.activations)
    raise InputError(
        f"{sizes} needs about {format_bytes(need.total)} per {step} (weights, gradients and optimizer "
        f"{format_bytes(need.weights)}, activations {acts}) but {torch.device(device)} has {format_bytes(available)}; "
        "lower --batch-size, --patch-size or the model's features"
    )
