"""Plug-and-play multi-scale fusion modules (pure PyTorch)."""

from fusionseg.fusion.dff import DFF
from fusionseg.fusion.registry import create_fusion, default_fusion_levels, list_fusions, register_fusion
from fusionseg.fusion.simple import AddFusion, ConcatFusion
from fusionseg.fusion.tif import TIF

__all__ = [
    "DFF",
    "TIF",
    "AddFusion",
    "ConcatFusion",
    "create_fusion",
    "default_fusion_levels",
    "list_fusions",
    "register_fusion",
]
