"""D-Net: DLK encoder + DFF decoder (Yang et al., arXiv 2403.10674).

``DNet`` is the journal version (v2, default), ``DNetV1`` the arXiv-v1 variant. Parameter
names follow the official code, so official state_dicts load with ``strict=True``.

Registered models: ``"dnet"`` (official v2 defaults), ``"dnet_v1"``, ``"dnet_small"``
(dims 16…256, trains on a laptop CPU). 3D by default (``spatial_dims=2``: the same network with 2D ops).

Two implementations, same numbers (fp32), switched with :func:`fusionseg.kernels.set_reference_ops`:
fast (default) — the input is moved to channels-last once and the whole network runs there (1×1
convs as matmuls, no permute copies, fused residuals, BatchNorms folded in eval mode); reference —
the original's op sequence on the caller's (NCDHW) layout. For bf16 see :func:`bf16_autocast`.

Example:
    >>> net = DNet(in_channels=1, out_channels=3, dims=(8, 16, 32, 64, 128), deep_supervision=False)
    >>> net(torch.randn(1, 1, 32, 32, 32)).shape
    torch.Size([1, 3, 32, 32, 32])
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from fusionseg.fusion import DFF
from fusionseg.kernels.conv import (
    bn_affine,
    conv_bn_channels_last,
    conv_channels_last,
    depthwise,
    pointwise,
    upsample2x,
)
from fusionseg.kernels.mlp import mlp_in_slabs
from fusionseg.kernels.switch import reference_ops_default, set_reference_ops
from fusionseg.layers import (
    LayerNormChannels,
    batch_norm_type,
    conv_transpose_type,
    conv_type,
    to_channels_last,
)
from fusionseg.nets.base import SegmentationNet
from fusionseg.nets.dlk import DLKBlock, DLKMlp
from fusionseg.nets.registry import register_model

__all__ = ["DNet", "DNetConvBlock", "DNetV1", "bf16_autocast"]

SIZE_MULTIPLE = 32


def bf16_autocast(device: str | torch.device = "cpu", enabled: bool = True) -> contextlib.AbstractContextManager:
    """Context manager running convs/matmuls in bfloat16 (``torch.autocast``) on ``device``.

    Works for inference and training (keep the weights and optimizer in fp32; no GradScaler is
    needed for bf16). Outputs are bf16 logits; take ``.float()`` before a loss or softmax if you
    want fp32. Example::

        with torch.inference_mode(), bf16_autocast("cpu"):
            logits = net(x)
    """
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


def _check_sequence(name: str, values: Sequence[int], length: int, minimum: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != length or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values):
        raise ValueError(f"{name} must be {length} ints >= {minimum}, got {values!r}")
    return values


class _ChannelsLastOps:
    """The three ops of D-Net's containers that have two implementations, chosen by ``self.reference_ops``:
    the module itself on the caller's layout (reference), or a channels-last kernel (fast).
    The convs come from ``nn.ModuleList``s, typed ``nn.Module``: hence the casts."""

    reference_ops: bool

    def _conv(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A dense conv (few input channels without gradients: one im2col matmul)."""
        return conv(x) if self.reference_ops else conv_channels_last(cast(_ConvNd, conv), x)

    def _up(self, conv_t: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A kernel-2 stride-2 transposed conv (fast: one matmul plus one interleaving copy)."""
        return conv_t(x) if self.reference_ops else upsample2x(x, cast(_ConvNd, conv_t))

    def _head(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A 1×1 segmentation head (fast: a matmul on the channels-last view)."""
        return conv(x) if self.reference_ops else pointwise(x, cast(_ConvNd, conv))


def _conv_norm_act(conv: type[nn.Module], bn: type[nn.Module], c_in: int, c_out: int) -> nn.Sequential:
    """Conv 3 (pad 1, bias) → BatchNorm → LeakyReLU(0.2); indices 0 and 1 are official names."""
    return nn.Sequential(conv(c_in, c_out, kernel_size=3, padding=1), bn(c_out), nn.LeakyReLU(0.2, inplace=True))


class DNetConvBlock(nn.Module):
    """Two ``Conv3 → BN → LeakyReLU(0.2)`` (official ``final_layer``/v1 ``saliency``: ``conv1``, ``conv2``).

    Fast path: channels-last out, each BatchNorm folded into its conv in eval mode.
    """

    def __init__(self, c_in: int, c_out: int, spatial_dims: int) -> None:
        super().__init__()
        conv, bn = conv_type(spatial_dims), batch_norm_type(spatial_dims)
        self.conv1 = _conv_norm_act(conv, bn, c_in, c_out)
        self.conv2 = _conv_norm_act(conv, bn, c_out, c_out)
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_reference(x) if self.reference_ops else self._forward_fast(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm, act in (self.conv1, self.conv2):  # nn.Sequential items are typed nn.Module
            x = act(conv_bn_channels_last(cast(_ConvNd, conv), cast(_BatchNorm, norm), x))
        return x


class Saliency(nn.Module):
    """v2 full-resolution branch: ``x = LReLU(BN(Conv3(in)))``; ``x + mlp(BN(x))`` with the SAME BN."""

    def __init__(self, in_channels: int, dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.channel_proj = conv_type(spatial_dims)(in_channels, dim, kernel_size=3, padding=1)
        self.norm_layer = batch_norm_type(spatial_dims)(dim)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.mlp = DLKMlp(dim, 4 * dim, spatial_dims)
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_reference(x) if self.reference_ops else self._forward_fast(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm_layer(self.channel_proj(x)))
        return x + self.mlp(self.norm_layer(x))

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        mlp, affine = self.mlp, bn_affine(self.norm_layer)
        x = self.act(conv_bn_channels_last(self.channel_proj, self.norm_layer, x))
        if affine is None:
            h = pointwise(self.norm_layer(x), mlp.fc1)
        else:  # eval: fold the second use of the BN into fc1, W·(x·s + t) + b = (W·diag(s))·x + (W·t + b)
            w1 = mlp.fc1.weight.flatten(1)
            assert mlp.fc1.bias is not None  # DLKMlp's convs have biases
            w1, b1 = w1 * affine[0], mlp.fc1.bias + w1 @ affine[1]
            y = mlp_in_slabs(x, w1, b1, mlp.dwconv, mlp.fc2, residual=True)
            if y is not None:
                return y
            h = F.linear(x.movedim(1, -1), w1, b1).movedim(-1, 1)
        h = F.gelu(depthwise(h, mlp.dwconv))
        return pointwise(h, mlp.fc2, residual=x)


def _stage(dim: int, depth: int, spatial_dims: int, version: int, rates: Sequence[float]) -> nn.Sequential:
    return nn.Sequential(*(DLKBlock(dim, spatial_dims, version, drop_path=r) for r in rates[:depth]))


def _drop_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to ``rate`` over all blocks, split per stage."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    flat = torch.linspace(0, rate, sum(depths), device="cpu").tolist() if sum(depths) else []
    out, start = [], 0
    for d in depths:
        out.append(flat[start : start + d])
        start += d
    return out


class _DNetBase(_ChannelsLastOps, SegmentationNet):
    """What DNet and DNetV1 share: the I/O attributes and input check, the layout step, the deprecated switch."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__(in_channels, out_channels, spatial_dims, SIZE_MULTIPLE)
        self.reference_ops = reference_ops_default()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x if self.reference_ops else to_channels_last(x)

    def _apply_deprecated_channels_last(self, channels_last: bool | None) -> None:
        if channels_last is not None:
            _warn_channels_last()
            set_reference_ops(self, not channels_last)

    @property
    def channels_last(self) -> bool:
        """Deprecated: ``not reference_ops`` (use :func:`fusionseg.kernels.set_reference_ops`)."""
        _warn_channels_last()
        return not self.reference_ops

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        _warn_channels_last()
        set_reference_ops(self, not value)


def _warn_channels_last() -> None:
    warnings.warn(
        "D-Net's channels_last argument/attribute is deprecated and will be removed in the next release; "
        "use fusionseg.kernels.set_reference_ops(net, True) for the original's op sequence (False: fast kernels)",
        DeprecationWarning,
        stacklevel=3,
    )


class DNet(_DNetBase):
    """D-Net v2 (journal version): DLK encoder with saliency branch, DFF decoder, deep supervision.

    Args:
        in_channels: input channels.
        out_channels: classes (logit channels).
        dims: 5 widths, stem first (official 48, 96, 192, 384, 768).
        depths: DLK blocks per encoder stage (5 values); decoder stage i mirrors ``depths[3 - i]``.
        drop_path_rate: max stochastic depth (linear over encoder, mirrored in the decoder).
        deep_supervision: True (official) → tuple of 5 logits, full resolution first
            (1, 1/2, 1/4, 1/8, 1/16); False → full-resolution logits.
        spatial_dims: 3 (default, official) or 2 (same architecture with 2D ops).
        channels_last: deprecated; ``False`` = ``set_reference_ops(net, True)``.

    Input spatial sizes must be multiples of 32 (``size_multiple``).

    Example:
        >>> net = DNet(1, 2, dims=(8, 16, 32, 64, 128), spatial_dims=2)
        >>> [o.shape[-1] for o in net(torch.randn(1, 1, 64, 64))]
        [64, 32, 16, 8, 4]
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        dims: Sequence[int] = (48, 96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 2, 2, 2),
        drop_path_rate: float = 0.0,
        deep_supervision: bool = True,
        spatial_dims: int = 3,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, spatial_dims)
        dims = _check_sequence("dims", dims, 5, 2)
        if any(d % 2 for d in dims):
            raise ValueError(f"dims must be even (the DLK v2 layer splits channels in halves), got {dims}")
        depths = _check_sequence("depths", depths, 5, 0)
        self.dims, self.depths, self.deep_supervision = dims, depths, bool(deep_supervision)
        self.encoder = _EncoderV2(in_channels, dims, depths, spatial_dims, _drop_rates(drop_path_rate, depths))
        dec_depths = [depths[3 - i] for i in range(4)]
        dec_rates = [list(reversed(r)) for r in reversed(_drop_rates(drop_path_rate, depths)[:4])]
        self.decoder = _DecoderV2(out_channels, dims, dec_depths, spatial_dims, dec_rates)
        self._apply_deprecated_channels_last(channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = self._prepare(x)
        features, saliency = self.encoder(x)
        outs = self.decoder(features, saliency, self.deep_supervision)
        return outs if self.deep_supervision else outs[0]


class _EncoderV2(_ChannelsLastOps, nn.Module):
    def __init__(self, in_channels, dims, depths, spatial_dims, rates) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        self.downsample_layers = nn.ModuleList(
            [conv(in_channels, dims[0], kernel_size=7, stride=2, padding=3)]
            + [conv(dims[i], dims[i + 1], kernel_size=3, stride=2, padding=1) for i in range(4)]
        )
        self.norm_layers = nn.ModuleList(LayerNormChannels(d) for d in dims)
        self.stages = nn.ModuleList(_stage(dims[i], depths[i], spatial_dims, 2, rates[i]) for i in range(5))
        self.saliency = Saliency(in_channels, dims[0], spatial_dims)
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        saliency = self.saliency(x)
        features = []
        for down, norm, stage in zip(self.downsample_layers, self.norm_layers, self.stages):
            x = stage(norm(self._conv(down, x)))
            features.append(x)
        return features, saliency


class _DecoderV2(_ChannelsLastOps, nn.Module):
    def __init__(self, out_channels, dims, depths, spatial_dims, rates) -> None:
        super().__init__()
        conv, conv_t = conv_type(spatial_dims), conv_transpose_type(spatial_dims)
        self.upsample_layers = nn.ModuleList(
            conv_t(dims[4 - i], dims[3 - i], kernel_size=2, stride=2) for i in range(4)
        )
        self.norm_layers = nn.ModuleList(LayerNormChannels(dims[3 - i]) for i in range(4))
        self.steps = nn.ModuleList(DFF(dims[3 - i], spatial_dims) for i in range(4))
        self.stages = nn.ModuleList(_stage(dims[3 - i], depths[i], spatial_dims, 2, rates[i]) for i in range(4))
        self.seg_layers = nn.ModuleList(conv(dims[3 - i], out_channels, kernel_size=1) for i in range(4))
        self.stem = conv_t(dims[0], dims[0], kernel_size=2, stride=2)
        self.final_fusion = DFF(dims[0], spatial_dims)
        self.final_layer = DNetConvBlock(dims[0], dims[0], spatial_dims)
        self.output_layer = conv(dims[0], out_channels, kernel_size=1)
        self.reference_ops = reference_ops_default()

    def forward(self, features, saliency, deep_supervision: bool) -> tuple[torch.Tensor, ...]:
        x = features[4]
        seg = []
        for i in range(4):
            x = self.norm_layers[i](self._up(self.upsample_layers[i], x))
            x = self.stages[i](self.steps[i](x, features[3 - i]))
            if deep_supervision:
                seg.append(self._head(self.seg_layers[i], x))
        x = self.final_layer(self.final_fusion(self._up(self.stem, x), saliency))
        return (self._head(self.output_layer, x), *reversed(seg))


class DNetV1(_DNetBase):
    """D-Net v1 (arXiv v1): DLK v1 encoder, bottleneck, DFF decoder at the coarse scale, saliency fusion.

    Args:
        in_channels, out_channels, spatial_dims, channels_last, drop_path_rate: as :class:`DNet`.
        dims: 5 widths (4 encoder stages + bottleneck; official 48, 96, 192, 384, 768).
        depths: DLK blocks per encoder stage and bottleneck (5 values); decoder stage i mirrors ``depths[3 - i]``.
        deep_supervision: False (official, no heads). True adds 1×1 heads ``dnet_up.seg_layers.i`` after
            each decoder stage and returns 5 logits, full resolution first.

    Example:
        >>> net = DNetV1(1, 2, dims=(8, 16, 32, 64, 128), spatial_dims=2)
        >>> net(torch.randn(1, 1, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        dims: Sequence[int] = (48, 96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 2, 2, 2),
        drop_path_rate: float = 0.0,
        deep_supervision: bool = False,
        spatial_dims: int = 3,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, spatial_dims)
        dims = _check_sequence("dims", dims, 5, 1)
        depths = _check_sequence("depths", depths, 5, 0)
        self.dims, self.depths, self.deep_supervision = dims, depths, bool(deep_supervision)
        rates = _drop_rates(drop_path_rate, depths)
        conv, sd = conv_type(spatial_dims), spatial_dims
        self.dnet_down = _EncoderV1(in_channels, dims, depths, sd, rates)
        self.bottleneck = _BottleneckV1(dims, depths[4], sd, rates[4])
        dec_rates = [list(reversed(r)) for r in reversed(rates[:4])]
        self.dnet_up = _DecoderV1(dims, [depths[3 - i] for i in range(4)], sd, dec_rates)
        if self.deep_supervision:
            self.dnet_up.seg_layers = nn.ModuleList(conv(dims[3 - i], out_channels, kernel_size=1) for i in range(4))
        self.saliency = DNetConvBlock(in_channels, dims[0], sd)
        self.final_layer = DNetConvBlock(dims[0], dims[0], sd)
        self.dff = DFF(dims[0], sd)
        self.output_layer = conv(dims[0], out_channels, kernel_size=1)
        self._apply_deprecated_channels_last(channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = self._prepare(x)
        saliency = self.saliency(x)
        skips = self.dnet_down(x)
        y, seg_features = self.dnet_up(self.bottleneck(skips[-1]), skips)
        out = self._head(self.output_layer, self.final_layer(self.dff(y, saliency)))
        if not self.deep_supervision:
            return out
        seg = [self._head(head, f) for head, f in zip(self.dnet_up.seg_layers, seg_features)]
        return (out, *reversed(seg))


class _EncoderV1(_ChannelsLastOps, nn.Module):
    def __init__(self, in_channels, dims, depths, spatial_dims, rates) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        self.downsample_layers = nn.ModuleList(
            [conv(in_channels, dims[0], kernel_size=7, stride=2, padding=3)]
            + [conv(dims[i], dims[i + 1], kernel_size=2, stride=2) for i in range(3)]
        )
        self.norm_layers = nn.ModuleList(LayerNormChannels(d) for d in dims[:4])
        self.stages = nn.ModuleList(_stage(dims[i], depths[i], spatial_dims, 1, rates[i]) for i in range(4))
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for down, norm, stage in zip(self.downsample_layers, self.norm_layers, self.stages):
            x = stage(norm(self._conv(down, x)))
            skips.append(x)
        return skips


class _BottleneckV1(_ChannelsLastOps, nn.Module):
    def __init__(self, dims, depth, spatial_dims, rates) -> None:
        super().__init__()
        self.downsample_layer = conv_type(spatial_dims)(dims[3], dims[4], kernel_size=2, stride=2)
        self.norm_layer1 = LayerNormChannels(dims[4])
        self.stage = _stage(dims[4], depth, spatial_dims, 1, rates)
        self.upsample_layer = conv_transpose_type(spatial_dims)(dims[4], dims[3], kernel_size=2, stride=2)
        self.norm_layer2 = LayerNormChannels(dims[3])
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(self.norm_layer1(self._conv(self.downsample_layer, x)))
        return self.norm_layer2(self._up(self.upsample_layer, x))


class _DecoderV1(_ChannelsLastOps, nn.Module):
    seg_layers: nn.ModuleList  # the deep-supervision heads, added by DNetV1

    def __init__(self, dims, depths, spatial_dims, rates) -> None:
        super().__init__()
        conv_t = conv_transpose_type(spatial_dims)
        widths = [dims[3 - i] for i in range(4)]  # 384, 192, 96, 48
        outs = [*widths[1:], dims[0]]  # 192, 96, 48, 48
        self.steps = nn.ModuleList(DFF(w, spatial_dims) for w in widths)
        self.stages = nn.ModuleList(_stage(w, d, spatial_dims, 1, r) for w, d, r in zip(widths, depths, rates))
        self.upsample_layers = nn.ModuleList(conv_t(w, o, kernel_size=2, stride=2) for w, o in zip(widths, outs))
        self.norm_layers = nn.ModuleList(LayerNormChannels(o) for o in outs)
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stage_outputs = []
        for i in range(4):
            x = self.stages[i](self.steps[i](x, skips[3 - i]))
            stage_outputs.append(x)
            x = self.norm_layers[i](self._up(self.upsample_layers[i], x))
        return x, stage_outputs


@register_model("dnet")
def dnet(**kwargs) -> DNet:
    """D-Net v2 with the official defaults (dims 48…768, depths 2, deep supervision)."""
    return DNet(**kwargs)


@register_model("dnet_v1")
def dnet_v1(**kwargs) -> DNetV1:
    """D-Net v1 with the official defaults (dims 48…768, no deep supervision)."""
    return DNetV1(**kwargs)


@register_model("dnet_small")
def dnet_small(**kwargs) -> DNet:
    """Laptop preset of D-Net v2: dims 16, 32, 64, 128, 256 (≈4.4 M parameters)."""
    return DNet(**{"dims": (16, 32, 64, 128, 256), **kwargs})
