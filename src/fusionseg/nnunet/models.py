"""nnU-Net networks in the model registry: ``nnunet_plain``, ``nnunet_resenc`` and ``nnunet_planned``.

Registered when :mod:`fusionseg.nnunet` is imported (the package facade :mod:`fusionseg` does so, so
``create_model("nnunet_plain", ...)`` works wherever the registry is used); importing this module needs
neither nnunetv2 nor dynamic-network-architectures, building a network does.

| name | network | defaults |
|---|---|---|
| ``nnunet_plain`` | nnU-Net ``PlainConvUNet`` | features 32…320, 2 convs per stage, deep supervision |
| ``nnunet_resenc`` | nnU-Net ``ResidualEncoderUNet`` | features 32…320, 1, 3, 4, 6, 6 blocks, deep supervision |
| ``nnunet_planned`` | the network an nnU-Net v2 trainer builds from its plans | (imported checkpoints) |

``nnunet_plain`` / ``nnunet_resenc`` need ``dynamic-network-architectures`` (not a dependency: its metadata
pulls timm, which these networks do not need): ``pip install --no-deps dynamic-network-architectures==0.4.4``;
like the MONAI networks they take a skip ``fusion`` (:func:`fusionseg.plug.plug_fusion`).
``nnunet_planned`` holds nnU-Net checkpoints whose network is not a fusionseg model (e.g. ``PlainConvUNet``
with DFF at the skips), as stored by ``fusionseg import-weights``; building it needs nnunetv2.

Example:
    >>> net = create_model("nnunet_plain", in_channels=1, out_channels=3, spatial_dims=2, fusion="dff")
    >>> net = create_model("nnunet_planned", trainer="nnUNetTrainerDFF", plans=plans,
    ...                    configuration="3d_fullres", in_channels=1, out_channels=3)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fusionseg.errors import InputError
from fusionseg.layers import int_list
from fusionseg.nets.external import check_io, with_fusion_and_contract
from fusionseg.nets.registry import register_model
from fusionseg.nnunet.requirements import require_nnunetv2

__all__ = ["DNA_INSTALL", "nnunet_plain", "nnunet_planned", "nnunet_resenc"]

DNA_INSTALL = "pip install --no-deps dynamic-network-architectures==0.4.4"


def _nnunet_ops(spatial_dims: int) -> dict:
    """nnU-Net's defaults: conv with bias, InstanceNorm (affine, eps 1e-5), LeakyReLU(0.01), no dropout."""
    return {
        "conv_op": nn.Conv2d if spatial_dims == 2 else nn.Conv3d,
        "conv_bias": True,
        "norm_op": nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
    }


def _dna_unet(name: str):
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        raise InputError(f"{name} needs dynamic-network-architectures (not installed): {DNA_INSTALL}") from None
    return unet


def _nnunet(
    name, cls_name, in_channels, out_channels, spatial_dims, features, kernel_size, blocks, decoder_convs,
    deep_supervision, fusion, fusion_levels,
) -> nn.Module:  # fmt: skip
    unet = _dna_unet(name)
    check_io(in_channels, out_channels, spatial_dims)
    features = int_list("features", features)
    if len(features) < 2:
        raise ValueError(f"{name} needs ≥ 2 features (stages), e.g. 32,64,128,256,320; got {features}")
    stages = len(features)
    block_arg = "n_conv_per_stage" if cls_name == "PlainConvUNet" else "n_blocks_per_stage"
    if blocks is None:  # nnU-Net ResEnc presets: 1, 3, 4, 6, 6, 6, ... blocks
        blocks = ([1, 3, 4] + [6] * stages)[:stages]
    blocks = int_list(block_arg, [blocks] * stages if isinstance(blocks, int) else blocks, stages)
    decoder_convs = int_list("n_conv_per_stage_decoder", decoder_convs, 1)[0]
    kernel_size = int_list("kernel_size", kernel_size, 1)[0]
    model = getattr(unet, cls_name)(
        in_channels, stages, features, kernel_sizes=kernel_size, strides=[1] + [2] * (stages - 1),
        num_classes=out_channels, n_conv_per_stage_decoder=decoder_convs, deep_supervision=bool(deep_supervision),
        **{block_arg: blocks},
        **_nnunet_ops(spatial_dims),
    )  # fmt: skip
    model.apply(model.initialize)  # as nnU-Net does after building the network
    kwargs = dict(
        in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, features=features,
        kernel_size=kernel_size, n_conv_per_stage_decoder=decoder_convs, deep_supervision=bool(deep_supervision),
    )  # fmt: skip
    kwargs[block_arg] = blocks
    return with_fusion_and_contract(model, name, kwargs, 2 ** (stages - 1), fusion, fusion_levels)


@register_model("nnunet_plain")
def nnunet_plain(
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    features: Sequence[int] = (32, 64, 128, 256, 320),
    kernel_size: int = 3,
    n_conv_per_stage: int | Sequence[int] = 2,
    n_conv_per_stage_decoder: int = 2,
    deep_supervision: bool = True,
    fusion: str = "concat",
    fusion_levels: Sequence[int] | None = None,
) -> nn.Module:
    """nnU-Net ``PlainConvUNet`` (dynamic-network-architectures), one stage per feature, strides 1 then 2s."""
    return _nnunet(
        "nnunet_plain", "PlainConvUNet", in_channels, out_channels, spatial_dims, features, kernel_size,
        n_conv_per_stage, n_conv_per_stage_decoder, deep_supervision, fusion, fusion_levels,
    )  # fmt: skip


@register_model("nnunet_resenc")
def nnunet_resenc(
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    features: Sequence[int] = (32, 64, 128, 256, 320),
    kernel_size: int = 3,
    n_blocks_per_stage: int | Sequence[int] | None = None,
    n_conv_per_stage_decoder: int = 1,
    deep_supervision: bool = True,
    fusion: str = "concat",
    fusion_levels: Sequence[int] | None = None,
) -> nn.Module:
    """nnU-Net ``ResidualEncoderUNet`` (ResEnc, dynamic-network-architectures); ``n_blocks_per_stage`` per stage
    (default nnU-Net's ResEnc 1, 3, 4, 6, 6, …)."""
    return _nnunet(
        "nnunet_resenc", "ResidualEncoderUNet", in_channels, out_channels, spatial_dims, features, kernel_size,
        n_blocks_per_stage, n_conv_per_stage_decoder, deep_supervision, fusion, fusion_levels,
    )  # fmt: skip


@register_model("nnunet_planned")
def nnunet_planned(trainer: str, plans: dict, configuration: str, in_channels: int, out_channels: int) -> nn.Module:
    """The network ``nnUNetPredictor`` builds for ``trainer`` (deep supervision off)."""
    require_nnunetv2(f"this checkpoint's nnU-Net network (trainer {trainer})")
    from fusionseg.nnunet.trainers import network_from_trainer

    try:
        return network_from_trainer(trainer, plans, configuration, in_channels, out_channels)
    except RuntimeError as err:  # nnU-Net: "Could not find requested nnunet trainer ..."
        raise InputError(
            f"cannot rebuild the network of nnU-Net trainer {trainer!r} ({str(err).splitlines()[0][:120]}); "
            "make the trainer visible to nnU-Net (its class in nnunetv2/training/nnUNetTrainer)"
        ) from None
