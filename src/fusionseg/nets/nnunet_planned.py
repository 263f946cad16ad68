"""Registry entry ``nnunet_planned``: a network trained with nnU-Net v2, rebuilt by its trainer from the plans.

``fusionseg import-weights`` stores nnU-Net checkpoints whose network is not a fusionseg model
(e.g. nnU-Net's ``PlainConvUNet`` with DFF at the skips) under this name; building it needs
nnunetv2 (see ``docs/nnunet.md``), importing this module does not.

Example:
    >>> net = create_model("nnunet_planned", trainer="nnUNetTrainerDFF", plans=plans,
    ...                    configuration="3d_fullres", in_channels=1, out_channels=3)
"""

from __future__ import annotations

import importlib.util

from torch import nn

from fusionseg.errors import InputError
from fusionseg.nets.registry import register_model

__all__ = ["nnunet_planned"]


@register_model("nnunet_planned")
def nnunet_planned(trainer: str, plans: dict, configuration: str, in_channels: int, out_channels: int) -> nn.Module:
    """The network ``nnUNetPredictor`` builds for ``trainer`` (deep supervision off)."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise InputError(
            f"this checkpoint holds an nnU-Net network (trainer {trainer}); install nnunetv2 as docs/nnunet.md says"
        )
    from fusionseg.nnunet.trainers import network_from_trainer

    try:
        return network_from_trainer(trainer, plans, configuration, in_channels, out_channels)
    except RuntimeError as err:  # nnU-Net: "Could not find requested nnunet trainer ..."
        raise InputError(
            f"cannot rebuild the network of nnU-Net trainer {trainer!r} ({str(err).splitlines()[0][:120]}); "
            "make the trainer visible to nnU-Net (its class in nnunetv2/training/nnUNetTrainer)"
        ) from None
