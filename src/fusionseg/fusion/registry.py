"""Fusion registry: every fusion is built as ``create_fusion(name, dim, spatial_dims)`` and
called as ``fusion(x, skip) -> (B, dim, *S)`` with x, skip of shape (B, dim, *S).

A fusion class says which skips a network fuses when none are chosen, with its class attribute
``default_skip_levels``: ``"every"`` (the default) or ``"deepest"`` (TIF: global attention);
:func:`default_fusion_levels` applies it for the U-Net and ``plug_fusion``.

Example:
    >>> list_fusions()
    ['add', 'concat', 'dff', 'tif']
    >>> create_fusion("dff", 16, spatial_dims=2)
    DFF(...)
    >>> default_fusion_levels("tif", [0, 1, 2]), default_fusion_levels("dff", [0, 1, 2])
    ((2,), (0, 1, 2))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from fusionseg.fusion.dff import DFF
from fusionseg.fusion.simple import AddFusion, ConcatFusion
from fusionseg.fusion.tif import TIF

__all__ = ["create_fusion", "default_fusion_levels", "list_fusions", "register_fusion"]

# name → factory(dim, spatial_dims=..., **kwargs): a fusion class, or a classmethod of one.
_FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "dff": DFF,
    "tif": TIF.for_skip,
    "concat": ConcatFusion,
    "add": AddFusion,
}


def register_fusion(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add a fusion ``factory(dim, spatial_dims=..., **kwargs) -> nn.Module`` under ``name``."""
    key = name.lower()
    if key in _FUSIONS:
        raise ValueError(f"fusion {name!r} is already registered; pick another name")
    _FUSIONS[key] = factory


def list_fusions() -> list[str]:
    """Names accepted by :func:`create_fusion`, sorted."""
    return sorted(_FUSIONS)


def default_fusion_levels(name: str, levels: Iterable[int]) -> tuple[int, ...]:
    """The skip ``levels`` (0 = full resolution) fusion ``name`` takes when none are chosen: all of them, or the
    deepest only when its class says ``default_skip_levels = "deepest"``."""
    factory = _FUSIONS[_known(name)]
    fusion_class = getattr(factory, "__self__", factory)  # a classmethod's class
    levels = sorted(set(levels))
    if getattr(fusion_class, "default_skip_levels", "every") == "deepest":
        return (levels[-1],)
    return tuple(levels)


def _known(name: str) -> str:
    key = str(name).lower()
    if key not in _FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose one of {', '.join(list_fusions())}")
    return key


def create_fusion(name: str, dim: int, spatial_dims: int = 3, **kwargs) -> nn.Module:
    """Build fusion ``name`` for ``dim`` channels (x and skip both (B, dim, *S))."""
    return _FUSIONS[_known(name)](dim, spatial_dims=spatial_dims, **kwargs)
