"""Registered MONAI networks with a pluggable skip fusion (``fusionseg.plug.plug_fusion``).

``create_model(name, fusion="dff", ...)`` builds the network with MONAI defaults, then replaces its
decoder skip concatenations by the fusion (``"concat"`` = the network unchanged):

| name | network | defaults |
|---|---|---|
| ``monai_basicunet`` | MONAI ``BasicUNet`` | features 16, 32, 64, 128, 256, 16 |
| ``monai_dynunet`` | MONAI ``DynUNet`` (nnU-Net-like) | filters 32…320, kernel 3, strides 1, 2, 2, … |
| ``monai_swinunetr`` | MONAI ``SwinUNETR`` | feature_size 24, depths 2, 2, 2, 2, heads 3, 6, 12, 24 |

The nnU-Net networks ``nnunet_plain`` and ``nnunet_resenc`` are registered by :mod:`fusionseg.nnunet.models`
with the same :func:`with_fusion_and_contract`. Every factory gives the network the model contract
(``spatial_dims``, ``in_channels``, ``out_channels``, ``size_multiple``, ``check_input`` run before every
forward); the registry records ``config``.

Example:
    >>> net = create_model("monai_basicunet", in_channels=1, out_channels=3, spatial_dims=2, fusion="dff")
    >>> net(torch.randn(1, 1, 64, 64)).shape
    torch.Size([1, 3, 64, 64])
    >>> net.fusion_plug.levels                 # the skips that got the fusion
    (0, 1, 2, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from fusionseg.layers import check_positive_int, check_spatial_dims, int_list
from fusionseg.nets.base import check_input_size
from fusionseg.nets.registry import register_model

__all__ = ["check_io", "monai_basicunet", "monai_dynunet", "monai_swinunetr", "with_fusion_and_contract"]


def check_io(in_channels: int, out_channels: int, spatial_dims: int) -> None:
    """ValueError naming the fix unless the channels are positive ints and ``spatial_dims`` is 2 or 3."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_spatial_dims(spatial_dims)


def _no_deep_supervision(name: str, deep_supervision: bool) -> None:
    if deep_supervision:
        raise ValueError(f"{name} has no deep supervision; pass deep_supervision=False (or --no-deep-supervision)")


def _check_input_hook(module: nn.Module, args: tuple) -> None:
    module.check_input(args[0])  # type: ignore[operator]  # set by with_fusion_and_contract


def _list_to_tuple(module: nn.Module, args: tuple, output):
    """nnU-Net's decoder returns deep-supervision logits as a list: the model contract is a tuple."""
    return tuple(output) if isinstance(output, list) else output


def with_fusion_and_contract(
    model: nn.Module, name: str, kwargs: dict, size_multiple: int, fusion: str, fusion_levels
) -> nn.Module:
    """Plug the fusion, then give the network the model contract of :class:`~fusionseg.nets.base.SegmentationNet`.

    ``spatial_dims``, ``in_channels``, ``out_channels``, ``size_multiple`` and ``check_input`` (run before every
    forward, so a wrong input size is a one-line :class:`InputError` naming the nearest valid size); the registry
    records ``config``.
    """
    from fusionseg.plug import plug_fusion

    plug_fusion(model, fusion, fusion_levels)
    model.spatial_dims, model.in_channels, model.out_channels = (
        kwargs["spatial_dims"],
        kwargs["in_channels"],
        kwargs["out_channels"],
    )
    model.size_multiple = size_multiple  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module
    model.check_input = partial(  # type: ignore[assignment]
        check_input_size,
        in_channels=kwargs["in_channels"],
        spatial_dims=kwargs["spatial_dims"],
        multiple=size_multiple,
        name=name,
    )
    model.register_forward_pre_hook(_check_input_hook)
    model.register_forward_hook(_list_to_tuple)
    return model


@register_model("monai_basicunet")
def monai_basicunet(
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    features: Sequence[int] = (16, 32, 64, 128, 256, 16),
    deep_supervision: bool = False,
    fusion: str = "concat",
    fusion_levels: Sequence[int] | None = None,
) -> nn.Module:
    """MONAI ``BasicUNet`` (instance norm, LeakyReLU 0.1, transposed-conv upsampling); 4 skips, ``size_multiple`` 16.

    ``features``: 5 encoder widths + the last decoder width. With ``fusion`` other than concat, the top up-block
    (which upsamples ``features[1]`` channels without halving) is rebuilt to emit ``features[0]`` when they differ.
    """
    from monai.networks.nets import BasicUNet

    check_io(in_channels, out_channels, spatial_dims)
    _no_deep_supervision("monai_basicunet", deep_supervision)
    if isinstance(features, int) or len(list(features)) != 6:
        raise ValueError(
            f"BasicUNet needs 6 features (5 levels + the last decoder), e.g. 16,32,64,128,256,16; got {features}"
        )
    features = int_list("features", features, 6)
    model = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=features)
    kwargs = dict(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, features=features)
    return with_fusion_and_contract(
        model, "monai_basicunet", {**kwargs, "deep_supervision": False}, 16, fusion, fusion_levels
    )


def _stacked_to_tuple(module: nn.Module, args, output):
    """DynUNet training output (B, 1 + heads, K, *S) → tuple of (B, K, *S) logits, full resolution first."""
    if module.training and module.deep_supervision and isinstance(output, torch.Tensor):
        return tuple(output.unbind(1))
    return output


@register_model("monai_dynunet")
def monai_dynunet(
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    filters: Sequence[int] = (32, 64, 128, 256, 320),
    kernel_size: int = 3,
    res_block: bool = False,
    deep_supervision: bool = False,
    deep_supr_num: int | None = None,
    fusion: str = "concat",
    fusion_levels: Sequence[int] | None = None,
) -> nn.Module:
    """MONAI ``DynUNet``, nnU-Net-like: one level per filter, stride 1 then 2s, kernel ``kernel_size``, instance norm.

    Deep supervision returns a tuple of logits (full resolution first; MONAI's heads are upsampled to full size)
    from ``deep_supr_num`` heads (default: every decoder level but the deepest, ``len(filters) - 2``).
    """
    from monai.networks.nets import DynUNet

    check_io(in_channels, out_channels, spatial_dims)
    filters = int_list("filters", filters)
    if len(filters) < 3:
        raise ValueError(f"DynUNet needs ≥ 3 filters (levels), e.g. 32,64,128,256,320; got {filters}")
    levels = len(filters)
    heads = levels - 2 if deep_supr_num is None else deep_supr_num
    if deep_supervision and not 1 <= heads <= levels - 2:
        raise ValueError(f"deep_supr_num must be in 1..{levels - 2} for {levels} filters, got {deep_supr_num}")
    kernel_size = int_list("kernel_size", kernel_size, 1)[0]
    strides = [1] + [2] * (levels - 1)
    model = DynUNet(
        spatial_dims, in_channels, out_channels, [kernel_size] * levels, strides, strides[1:], filters=filters,
        res_block=bool(res_block), deep_supervision=bool(deep_supervision), deep_supr_num=heads,
    )  # fmt: skip
    if deep_supervision:
        model.register_forward_hook(_stacked_to_tuple)
    kwargs = dict(
        in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, filters=filters,
        kernel_size=kernel_size, res_block=bool(res_block), deep_supervision=bool(deep_supervision),
        deep_supr_num=heads,
    )  # fmt: skip
    return with_fusion_and_contract(model, "monai_dynunet", kwargs, 2 ** (levels - 1), fusion, fusion_levels)


@register_model("monai_swinunetr")
def monai_swinunetr(
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    feature_size: int = 24,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    norm: str = "instance",
    deep_supervision: bool = False,
    fusion: str = "concat",
    fusion_levels: Sequence[int] | None = None,
) -> nn.Module:
    """MONAI ``SwinUNETR`` (v1, patch 2, merging downsampling); 5 skips, spatial sizes multiples of 32."""
    from monai.networks.nets import SwinUNETR

    check_io(in_channels, out_channels, spatial_dims)
    _no_deep_supervision("monai_swinunetr", deep_supervision)
    feature_size = int_list("feature_size", feature_size, 1, minimum=12)[0]
    if feature_size % 12:
        raise ValueError(f"feature_size must be a multiple of 12 (SwinUNETR), got {feature_size}")
    depths, num_heads = int_list("depths", depths, 4), int_list("num_heads", num_heads, 4)
    window_size = int_list("window_size", window_size, 1)[0]
    if norm not in ("instance", "batch"):
        raise ValueError(f'norm must be "instance" or "batch", got {norm!r}')
    model = SwinUNETR(
        in_channels, out_channels, feature_size=feature_size, depths=depths, num_heads=num_heads,
        window_size=window_size, norm_name=norm, spatial_dims=spatial_dims,
    )  # fmt: skip
    kwargs = dict(
        in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, feature_size=feature_size,
        depths=depths, num_heads=num_heads, window_size=window_size, norm=norm, deep_supervision=False,
    )  # fmt: skip
    return with_fusion_and_contract(model, "monai_swinunetr", kwargs, 32, fusion, fusion_levels)
