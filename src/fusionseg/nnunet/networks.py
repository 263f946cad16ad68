"""nnU-Net's own planned network (``PlainConvUNet`` for the default plans) with a skip fusion.

:func:`planned_unet` builds it and replaces the skip concatenations at ``levels`` (0 = full
resolution) by ``fusion`` (``"dff"``, ``"tif"``, ...) through ``fusionseg.plug.plug_fusion``.
Rebuilding a checkpoint's network by trainer name is :func:`fusionseg.nnunet.trainers.network_from_trainer`.

Example:
    >>> pm = PlansManager("nnUNetPlans.json"); cm = pm.get_configuration("3d_fullres")
    >>> net = planned_unet(pm, cm, in_channels=1, out_channels=3, deep_supervision=True, fusion="dff")
    >>> [o.shape[2:] for o in net(torch.randn(2, 1, *cm.patch_size))]   # one output per decoder stage
"""

from __future__ import annotations

from collections.abc import Sequence

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from fusionseg.plug import plug_fusion

__all__ = ["planned_unet"]


def planned_unet(
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    in_channels: int,
    out_channels: int,
    deep_supervision: bool,
    fusion: str | None = None,
    levels: Sequence[int] | None = None,
) -> nn.Module:
    """nnU-Net's planned network for ``configuration_manager``, with ``fusion`` at the skips ``levels``."""
    cm = configuration_manager
    net = get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        in_channels,
        out_channels,
        allow_init=True,
        deep_supervision=deep_supervision,
    )
    return plug_fusion(net, fusion, levels) if fusion else net
