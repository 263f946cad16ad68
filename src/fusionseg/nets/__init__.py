"""Networks (pure PyTorch). Importing this package registers every built-in model.

Every network derives from :class:`SegmentationNet` (``in_channels``, ``out_channels``,
``spatial_dims``, ``size_multiple``, one input check); :func:`create_model` records ``model.config``.
``spatial_dims`` defaults to 3 everywhere except DS-TransUNet (2D, as in its paper).
"""

from fusionseg.nets import dnet, ds_transunet, external, unet  # noqa: F401  (registers the models)
from fusionseg.nets.base import SegmentationNet, check_input_size, crop_to, nearest_valid_size, pad_to_multiple
from fusionseg.nets.registry import create_inference_model, create_model, list_models, register_model

__all__ = [
    "SegmentationNet",
    "check_input_size",
    "create_inference_model",
    "create_model",
    "crop_to",
    "list_models",
    "nearest_valid_size",
    "pad_to_multiple",
    "register_model",
]
