"""Networks (pure PyTorch). Importing this package registers every built-in model."""

from fusionseg.nets import dnet, ds_transunet, nnunet_planned, unet  # noqa: F401  (registers the models)
from fusionseg.nets.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
