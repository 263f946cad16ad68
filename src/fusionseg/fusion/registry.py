"""Fusion registry: every fusion is built as ``create_fusion(name, dim, spatial_dims)`` and
called as ``fusion(x, skip) -> (B, dim, *S)`` with x, skip of shape (B, dim, *S).

Example:
    >>> list_fusions()
    ['add', 'concat', 'dff', 'tif']
    >>> create_fusion("dff", 16, spatial_dims=2)
    DFF(...)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fusionseg.fusion.dff import DFF
from fusionseg.fusion.simple import AddFusion, ConcatFusion
from fusionseg.fusion.tif import TIF

__all__ = ["create_fusion", "list_fusions", "register_fusion"]

_FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "dff": lambda dim, spatial_dims=3, **kw: DFF(dim, spatial_dims=spatial_dims, **kw),
    "tif": lambda dim, spatial_dims=3, **kw: TIF(dim, dim, spatial_dims=spatial_dims, **kw),
    "concat": lambda dim, spatial_dims=3, **kw: ConcatFusion(dim, spatial_dims=spatial_dims, **kw),
    "add": lambda dim, spatial_dims=3, **kw: AddFusion(dim, spatial_dims=spatial_dims, **kw),
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


def create_fusion(name: str, dim: int, spatial_dims: int = 3, **kwargs) -> nn.Module:
    """Build fusion ``name`` for ``dim`` channels (x and skip both (B, dim, *S))."""
    key = str(name).lower()
    if key not in _FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose one of {', '.join(list_fusions())}")
    return _FUSIONS[key](dim, spatial_dims=spatial_dims, **kwargs)
