"""Data-parallel training helpers: one process per device, started by ``torchrun``.

``torchrun --nproc_per_node=N -m fusionseg train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`init_distributed` joins the process group (NCCL on CUDA, gloo on CPU). Without those
variables everything degrades to a single process and the helpers are no-ops.

Example:
    >>> info = init_distributed()                  # DistInfo(rank=0, world_size=1, ..., enabled=False)
    >>> model = wrap_model(model.to(info.device), info)
    >>> loss = all_reduce_mean(loss.detach(), info)
    >>> if info.is_main: save_checkpoint(...)      # only rank 0 writes
    >>> cleanup(info)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fusionseg.errors import InputError
from fusionseg.runtime.devices import pick_device

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "init_distributed",
    "unwrap_model",
    "wrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. ``enabled`` is True only with a process group of > 1 ranks."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True
    enabled: bool = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(
            f"environment variable {name}={value!r} is not an integer; unset it or fix the launcher"
        ) from None


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Read the torchrun environment and, when WORLD_SIZE > 1, join the process group.

    Args:
        device: "auto" (CUDA GPU ``LOCAL_RANK`` if available, else CPU), "cpu", "cuda", "cuda:N", "mps".
        timeout_s: collective timeout (a crashed peer makes the others fail after this instead of hanging).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = pick_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, enabled=False)
    if dev.type == "mps":
        raise InputError("multi-process training is not supported on MPS; use --device cpu or CUDA GPUs")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        try:
            dist.init_process_group(rank=rank, world_size=world_size, **kwargs)
        except (ValueError, RuntimeError) as err:  # missing MASTER_ADDR/PORT, port in use, peer unreachable
            first = " ".join(str(err).split())[:200]
            raise InputError(
                f"could not join the {backend} process group as rank {rank}/{world_size} ({first}); "
                "launch with `torchrun --nproc_per_node=N -m fusionseg ...` (it sets MASTER_ADDR/MASTER_PORT)"
            ) from None
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        is_main=dist.get_rank() == 0,
        enabled=True,
    )


def wrap_model(model: nn.Module, info: DistInfo, sync_batchnorm: bool = False, **ddp_kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` when ``info.enabled``, else ``model`` unchanged.

    The model must already be on ``info.device``. ``sync_batchnorm`` converts BatchNorm layers to
    SyncBatchNorm (CUDA only). Extra keyword arguments go to DDP (e.g. ``find_unused_parameters``).
    """
    if not info.enabled:
        return model
    if sync_batchnorm and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if info.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [info.device.index])
        ddp_kwargs.setdefault("output_device", info.device.index)
    return nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel / ``torch.compile`` wrappers (state_dict without prefixes)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def all_reduce_mean(value: float | torch.Tensor, info: DistInfo) -> float:
    """Mean of ``value`` over all ranks, as a Python float (the value itself for one process)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.numel() != 1:
            value = value.float().mean()
    if not info.enabled:
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64).to(info.device).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op for one process)."""
    if info.enabled and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group (safe to call twice or for one process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
