"""nnU-Net v2 trainers for fusionseg's networks: ``nnUNetv2_train DATASET CONFIG FOLD -tr <name>``.

| trainer | network | configurations | patch size |
|---|---|---|---|
| ``nnUNetTrainerDNet`` | D-Net v2 (``dnet``, dims 48…768) | 3d_fullres (and 2d) | planned, rounded to multiples of 32 |
| ``nnUNetTrainerDNetSmall`` | D-Net v2 CPU preset (``dnet_small``, dims 16…256) | same | same |
| ``nnUNetTrainerDFF`` | nnU-Net's planned U-Net, DFF at every skip | all | planned |
| ``nnUNetTrainerTIF`` | nnU-Net's planned U-Net, TIF at the deepest skip | all | planned |
| ``nnUNetTrainerDSTransUNet`` | DS-TransUNet (``ds_transunet``) | 2d | planned, rounded to multiples of 64 |
| ``nnUNetTrainerDSTransUNetSmall`` | DS-TransUNet CPU preset (``ds_transunet_small``) | 2d | same |

Everything else is nnU-Net's: planning, preprocessing, augmentation, Dice + CE loss, SGD with
poly learning rate, 5-fold cross-validation, sliding-window inference, ensembling, postprocessing.
What the trainers adapt:

- patch size: D-Net / DS-TransUNet need sides that are multiples of 32 / 64; the planned patch is
  rounded to the nearest multiple (at least one) in the trainer's copy of the plans, which nnU-Net
  saves with the model, so ``nnUNetv2_predict`` slides the same window;
- deep supervision: nnU-Net derives target scales from the pooling strides of its own U-Net; these
  trainers give the scales of their network's outputs instead (D-Net: 1, 1/2, 1/4, 1/8, 1/16 with
  nnU-Net's weights 1, ½, ¼, ⅛, 0 normalised; DS-TransUNet: three full-resolution outputs weighted
  0.6, 0.2, 0.2 as in the original). ``decoder.deep_supervision`` switches them (see :mod:`.adapters`);
- DS-TransUNet uses its original optimiser settings (SGD momentum 0.9, lr 1e-3, weight decay 1e-4)
  with nnU-Net's poly schedule; nnU-Net's (momentum 0.99, lr 1e-2) is meant for CNNs;
- pretrained encoders: ``FUSIONSEG_PRETRAINED=MAIN[,SECOND]`` (local ImageNet Swin checkpoints, as
  ``fusionseg train --pretrained``) loads them after the network is built; one log line says what matched.

Example (after ``fusionseg nnunet install``)::

    nnUNetv2_train 1 3d_fullres 0 -tr nnUNetTrainerDNet
    nnUNetv2_predict -i imagesTs -o preds -d 1 -c 3d_fullres -f 0 -tr nnUNetTrainerDNet
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from fusionseg.errors import InputError
from fusionseg.nets.base import nearest_valid_size
from fusionseg.nets.swin_pretrained import PRETRAINED_ENV, load_pretrained_encoders, parse_pretrained
from fusionseg.nnunet.adapters import build_fusionseg_network, deep_supervision_scales
from fusionseg.nnunet.networks import planned_unet

__all__ = [
    "TRAINERS",
    "FusionsegTrainerBase",
    "find_trainer",
    "network_from_trainer",
    "nnUNetTrainerDFF",
    "nnUNetTrainerDNet",
    "nnUNetTrainerDNetSmall",
    "nnUNetTrainerDSTransUNet",
    "nnUNetTrainerDSTransUNetSmall",
    "nnUNetTrainerTIF",
]


_CUDA = torch.device("cuda")  # nnU-Net's default device


def _plans_with_patch_multiple(plans: dict, configuration: str, multiple: int) -> tuple[dict, list, list]:
    """A copy of ``plans`` whose ``configuration`` has a patch size fitted to ``multiple`` → (plans, old, new)."""
    plans = copy.deepcopy(plans)
    extra = {k: plans.pop(k) for k in ("continue_training",) if k in plans}  # run_training's flag, not plans
    old = [int(s) for s in PlansManager(plans).get_configuration(configuration).patch_size]
    new = list(nearest_valid_size(old, multiple))  # e.g. [80, 192, 160], 32 → [96, 192, 160]
    plans["configurations"][configuration]["patch_size"] = new  # overrides an inherited value too
    plans.update(extra)
    return plans, old, new


class FusionsegTrainerBase(nnUNetTrainer):
    """Shared adaptations; subclasses set the class attributes below.

    Attributes:
        network_name: fusionseg registry name of the network (None: nnU-Net's planned U-Net).
        fusion, fusion_levels: for the planned U-Net: the skip fusion and its levels (0 = full
            resolution; None = the plug's default).
        patch_multiple: every patch side is fitted to a multiple of this.
        spatial_dims: the configurations' dimensionalities this trainer accepts.
        deep_supervision_weights: loss weight per deep-supervision output (None: nnU-Net's).
    """

    network_name: str | None = None
    fusion: str | None = None
    fusion_levels: Sequence[int] | None = None
    patch_multiple: int = 1
    spatial_dims: tuple[int, ...] = (2, 3)
    deep_supervision_weights: Sequence[float] | None = None

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _CUDA,
    ) -> None:
        dims = len(PlansManager(copy.deepcopy(plans)).get_configuration(configuration).patch_size)
        if dims not in self.spatial_dims:
            wanted = " or ".join(f"{d}D" for d in self.spatial_dims)
            raise InputError(
                f"{type(self).__name__} trains {wanted} networks but configuration {configuration!r} is {dims}D; "
                f"use {'the 2d configuration' if self.spatial_dims == (2,) else 'another configuration'}"
            )
        old = new = None
        if self.patch_multiple > 1:
            plans, old, new = _plans_with_patch_multiple(plans, configuration, self.patch_multiple)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if old != new:
            self.print_to_log_file(
                f"{type(self).__name__}: patch size {old} → {new} (network needs multiples of {self.patch_multiple})"
            )

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        """The trainer's network for these plans (also what ``nnUNetPredictor`` calls, with deep supervision off)."""
        if cls.network_name is None:
            return planned_unet(
                plans_manager,
                configuration_manager,
                num_input_channels,
                num_output_channels,
                enable_deep_supervision,
                fusion=cls.fusion,
                levels=cls.skip_levels(configuration_manager),
            )
        dims = len(configuration_manager.patch_size)
        return build_fusionseg_network(
            cls.network_name, num_input_channels, num_output_channels, dims, enable_deep_supervision
        )

    @classmethod
    def skip_levels(cls, configuration_manager: ConfigurationManager) -> Sequence[int] | None:
        """Skip levels of the planned U-Net that get ``fusion`` (0 = full resolution; None = the plug's default)."""
        return cls.fusion_levels

    def initialize(self) -> None:
        """nnU-Net's initialize, then the ImageNet Swin encoders of ``$FUSIONSEG_PRETRAINED`` (MAIN[,SECOND]).

        A checkpoint nnU-Net loads afterwards (``--c``, ``--val``) replaces them, as it should.
        """
        first = not self.was_initialized
        super().initialize()
        paths = parse_pretrained(os.environ.get(PRETRAINED_ENV))
        if first and paths:
            network = self.network.module if hasattr(self.network, "module") else self.network
            network = getattr(network, "_orig_mod", network)  # torch.compile wrapper
            self.print_to_log_file(load_pretrained_encoders(network, paths))

    def _get_deep_supervision_scales(self):
        if self.network_name is None or not self.enable_deep_supervision:
            return super()._get_deep_supervision_scales()
        return deep_supervision_scales(self.network_name, len(self.configuration_manager.patch_size))

    def _build_loss(self):
        loss = super()._build_loss()
        if self.enable_deep_supervision and self.deep_supervision_weights is not None:
            total = float(sum(self.deep_supervision_weights))
            loss.weight_factors = tuple(w / total for w in self.deep_supervision_weights)
        return loss


class nnUNetTrainerDNet(FusionsegTrainerBase):
    """D-Net v2 (official widths 48…768) inside nnU-Net."""

    network_name = "dnet"
    patch_multiple = 32


class nnUNetTrainerDNetSmall(nnUNetTrainerDNet):
    """D-Net v2 CPU preset (widths 16…256) inside nnU-Net."""

    network_name = "dnet_small"


class nnUNetTrainerDFF(FusionsegTrainerBase):
    """nnU-Net's planned U-Net with DFF instead of concatenation at every skip."""

    fusion = "dff"

    @classmethod
    def skip_levels(cls, configuration_manager: ConfigurationManager) -> Sequence[int] | None:
        return tuple(range(int(configuration_manager.network_arch_init_kwargs["n_stages"]) - 1))


class nnUNetTrainerTIF(FusionsegTrainerBase):
    """nnU-Net's planned U-Net with TIF at the deepest skip (global attention: O(voxels²) per skip)."""

    fusion = "tif"

    @classmethod
    def skip_levels(cls, configuration_manager: ConfigurationManager) -> Sequence[int] | None:
        return (int(configuration_manager.network_arch_init_kwargs["n_stages"]) - 2,)


class nnUNetTrainerDSTransUNet(FusionsegTrainerBase):
    """DS-TransUNet (official Swin-B + Swin-T) inside nnU-Net, 2d configuration."""

    network_name = "ds_transunet"
    patch_multiple = 64
    spatial_dims = (2,)
    deep_supervision_weights = (0.6, 0.2, 0.2)

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _CUDA,
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.weight_decay = 1e-4

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(
            self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay, momentum=0.9
        )
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerDSTransUNetSmall(nnUNetTrainerDSTransUNet):
    """DS-TransUNet CPU preset (dim 32) inside nnU-Net, 2d configuration."""

    network_name = "ds_transunet_small"


TRAINERS: dict[str, type[FusionsegTrainerBase]] = {
    cls.__name__: cls
    for cls in (
        nnUNetTrainerDNet,
        nnUNetTrainerDNetSmall,
        nnUNetTrainerDFF,
        nnUNetTrainerTIF,
        nnUNetTrainerDSTransUNet,
        nnUNetTrainerDSTransUNetSmall,
    )
}


def find_trainer(name: str) -> type[nnUNetTrainer]:
    """The nnU-Net trainer class called ``name``: ours first, then wherever nnU-Net itself looks."""
    cls = globals().get(name)
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
