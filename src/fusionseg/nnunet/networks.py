"""Networks for nnU-Net v2 built from its plans: the planned U-Net with a skip fusion, and rebuilds by trainer name.

- :func:`planned_unet` — nnU-Net's own planned network (``PlainConvUNet`` for the default plans)
  with ``fusion`` (``"dff"``, ``"tif"``, ...) replacing the skip concatenations at ``levels``
  (0 = full resolution) through ``fusionseg.plug.plug_fusion``;
- :func:`network_from_trainer` — what ``nnUNetPredictor`` builds for a checkpoint: the trainer's
  ``build_network_architecture`` with deep supervision off, described with the attributes fusionseg
  models carry (``spatial_dims``, ``in_channels``, ``out_channels``, ``size_multiple``, ``config``).

Example:
    >>> pm = PlansManager("nnUNetPlans.json"); cm = pm.get_configuration("3d_fullres")
    >>> net = planned_unet(pm, cm, in_channels=1, out_channels=3, deep_supervision=True, fusion="dff")
    >>> [o.shape[2:] for o in net(torch.randn(2, 1, *cm.patch_size))]   # one output per decoder stage
"""

from __future__ import annotations

import copy
import importlib.util
import math
from collections.abc import Sequence

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

__all__ = ["find_trainer", "network_from_trainer", "planned_unet", "plug_fusion"]


def plug_fusion(model: nn.Module, fusion: str, levels: Sequence[int] | None = None) -> nn.Module:
    """``fusionseg.plug.plug_fusion`` when that module exists, else the temporary stand-in (nnU-Net decoders only)."""
    if importlib.util.find_spec("fusionseg.plug") is not None:
        from fusionseg.plug import plug_fusion as plug
    else:
        from fusionseg.nnunet._plug_standin import plug_fusion as plug
    return plug(model, fusion, levels=levels)


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


def find_trainer(name: str) -> type:
    """The nnU-Net trainer class called ``name``: ours first, then wherever nnU-Net itself looks."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from fusionseg.nnunet import trainers

    cls = getattr(trainers, name, None)
    if isinstance(cls, type) and issubclass(cls, nnUNetTrainer):
        return cls
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)


def network_from_trainer(
    trainer: str, plans: dict, configuration: str, in_channels: int, out_channels: int
) -> nn.Module:
    """The network ``nnUNetPredictor`` builds for a checkpoint of ``trainer`` (deep supervision off, eval mode)."""
    plans_manager = PlansManager(copy.deepcopy(plans))
    cm = plans_manager.get_configuration(configuration)
    net = find_trainer(trainer).build_network_architecture(
        plans_manager, cm, in_channels, out_channels, enable_deep_supervision=False
    )
    spatial_dims = len(cm.patch_size)
    strides = cm.network_arch_init_kwargs.get("strides") or cm.pool_op_kernel_sizes
    total = [math.prod(int(s[d]) for s in strides) for d in range(spatial_dims)]
    net.spatial_dims, net.in_channels, net.out_channels = spatial_dims, in_channels, out_channels
    net.size_multiple = getattr(net, "size_multiple", None) or max(total)
    if not isinstance(getattr(net, "config", None), dict):
        net.config = {
            "name": "nnunet_planned",
            "kwargs": {
                "trainer": trainer,
                "plans": plans,
                "configuration": configuration,
                "in_channels": in_channels,
                "out_channels": out_channels,
            },
        }
    return net.eval()
