"""fusionseg — DFF / TIF feature fusion, D-Net and DS-TransUNet for medical image segmentation."""

from fusionseg import nnunet as _nnunet  # noqa: F401  (registers nnU-Net's networks, plug adapter and predictor)
from fusionseg.fusion import DFF, TIF, create_fusion, list_fusions
from fusionseg.nets.registry import create_model, list_models
from fusionseg.version import __version__

__all__ = ["DFF", "TIF", "__version__", "create_fusion", "create_model", "list_fusions", "list_models"]
