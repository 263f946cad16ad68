"""D-Net: DLK encoder + DFF decoder (arXiv 2403.10674; spec: ``specs/dnet.md``).

``DNet`` is the journal version (v2, default), ``DNetV1`` the arXiv-v1 variant. Parameter
names follow the official code, so official state_dicts load with ``strict=True``.

Registered models: ``"dnet"`` (official v2 defaults), ``"dnet_v1"``, ``"dnet_small"``
(dims 16…256, trains on a laptop CPU).

Layouts: with ``channels_last=True`` (default) the input is moved to channels-last once and
the whole network runs there (1×1 convs as matmuls, no permute copies, fused residuals);
``channels_last=False`` runs the original's op sequence on the caller's (NCDHW) layout.
Both give the same numbers (fp32). For bf16 see :func:`bf16_autocast`.

Example:
    >>> net = DNet(in_channels=1, out_channels=3, dims=(8, 16, 32, 64, 128), deep_supervision=False)
    >>> net(torch.randn(1, 1, 32, 32, 32)).shape
    torch.Size([1, 3, 32, 32, 32])
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.errors import InputError
from fusionseg.fusion import DFF
from fusionseg.layers import (
    LayerNormChannels,
    batch_norm_type,
    check_spatial_dims,
    conv_transpose_type,
    conv_type,
    to_channels_last,
)
from fusionseg.nets.dlk import (
    DLKBlock,
    DLKMlp,
    conv_few_channels,
    depthwise,
    mlp_in_slabs,
    pointwise,
    set_fast_path,
    upsample2x,
)
from fusionseg.nets.registry import register_model

__all__ = ["DNet", "DNetV1", "bf16_autocast", "check_input_size"]

SIZE_MULTIPLE = 32


def check_input_size(x: torch.Tensor, in_channels: int, spatial_dims: int, multiple: int, name: str) -> None:
    """Raise :class:`InputError` (a ValueError) unless x is (B, in_channels, *S) with every S % multiple == 0."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        axes = "D, H, W" if spatial_dims == 3 else "H, W"
        raise InputError(
            f"{name} expects input (B, {in_channels}, {axes}) for in_channels={in_channels}, "
            f"spatial_dims={spatial_dims}; got shape {tuple(x.shape)}"
        )
    sizes = tuple(x.shape[2:])
    if any(s % multiple for s in sizes):
        nearest = tuple(max(multiple, int(s / multiple + 0.5) * multiple) for s in sizes)
        raise InputError(
            f"{name} needs every spatial size to be a multiple of {multiple}; got {sizes}, "
            f"nearest valid size {nearest} (crop/pad the input or use sliding-window inference with that roi size)"
        )


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


def _conv_channels_last(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """``conv`` with these weights, channels-last out (few input channels: one im2col matmul)."""
    y = conv_few_channels(conv, x, weight, bias)
    return to_channels_last(conv._conv_forward(x, weight, bias)) if y is None else y


def _dense(conv: nn.Module, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """``conv(x)``; channels-last out on the fast path."""
    return _conv_channels_last(conv, x, conv.weight, conv.bias) if fast else conv(x)


def _up(conv_t: nn.Module, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """Kernel-2 stride-2 transposed conv: a matmul on the fast path, the module otherwise."""
    return upsample2x(x, conv_t) if fast else conv_t(x)


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Eval-mode BatchNorm as ``x·scale + shift`` per channel, or None when it uses batch statistics."""
    if bn.training or bn.running_mean is None:
        return None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _conv_bn(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``, channels-last; in eval mode the BN is folded into the conv weights (one pass fewer)."""
    affine = _bn_affine(bn)
    if affine is None:
        return bn(_dense(conv, x, True))
    scale, shift = affine
    weight = conv.weight * scale.view(-1, *(1,) * (conv.weight.ndim - 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return _conv_channels_last(conv, x, weight, bias)


def _conv_norm_act(conv: type[nn.Module], bn: type[nn.Module], c_in: int, c_out: int) -> nn.Sequential:
    """Conv 3 (pad 1, bias) → BatchNorm → LeakyReLU(0.2); indices 0 and 1 are official names."""
    return nn.Sequential(conv(c_in, c_out, kernel_size=3, padding=1), bn(c_out), nn.LeakyReLU(0.2, inplace=True))


class ConvBlock(nn.Module):
    """Two ``Conv3 → BN → LeakyReLU(0.2)`` (official ``final_layer``/v1 ``saliency``: ``conv1``, ``conv2``)."""

    def __init__(self, c_in: int, c_out: int, spatial_dims: int) -> None:
        super().__init__()
        conv, bn = conv_type(spatial_dims), batch_norm_type(spatial_dims)
        self.conv1 = _conv_norm_act(conv, bn, c_in, c_out)
        self.conv2 = _conv_norm_act(conv, bn, c_out, c_out)
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.conv2(self.conv1(x))
        for conv, norm, act in (self.conv1, self.conv2):
            x = act(_conv_bn(conv, norm, x))
        return x


class Saliency(nn.Module):
    """v2 full-resolution branch: ``x = LReLU(BN(Conv3(in)))``; ``x + mlp(BN(x))`` with the SAME BN."""

    def __init__(self, in_channels: int, dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.channel_proj = conv_type(spatial_dims)(in_channels, dim, kernel_size=3, padding=1)
        self.norm_layer = batch_norm_type(spatial_dims)(dim)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.mlp = DLKMlp(dim, 4 * dim, spatial_dims)
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            x = self.act(self.norm_layer(self.channel_proj(x)))
            return x + self.mlp(self.norm_layer(x))
        mlp, affine = self.mlp, _bn_affine(self.norm_layer)
        x = self.act(_conv_bn(self.channel_proj, self.norm_layer, x))
        if affine is None:
            h = pointwise(self.norm_layer(x), mlp.fc1)
        else:  # eval: fold the second use of the BN into fc1, W·(x·s + t) + b = (W·diag(s))·x + (W·t + b)
            w1 = mlp.fc1.weight.flatten(1)
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
    flat = torch.linspace(0, rate, sum(depths)).tolist() if sum(depths) else []
    out, start = [], 0
    for d in depths:
        out.append(flat[start : start + d])
        start += d
    return out


class _DNetBase(nn.Module):
    """Shared plumbing: layout switch, input checks, config."""

    size_multiple = SIZE_MULTIPLE

    def _init_common(self, in_channels: int, out_channels: int, spatial_dims: int, channels_last: bool) -> None:
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self._channels_last = bool(channels_last)
        self.config: dict = {"name": type(self).__name__.lower(), "kwargs": {}}

    @property
    def channels_last(self) -> bool:
        """True: fast channels-last path; False: the original's plain layout and op sequence."""
        return self._channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self._channels_last = bool(value)
        set_fast_path(self, self._channels_last)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_channels, self.spatial_dims, self.size_multiple, type(self).__name__)
        return to_channels_last(x) if self._channels_last else x

    def _head(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return pointwise(x, conv) if self._channels_last else conv(x)


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
        spatial_dims: 3 (official) or 2 (same architecture with 2D ops).
        channels_last: fast channels-last path (default) or the original's plain layout.

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
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self._init_common(in_channels, out_channels, spatial_dims, channels_last)
        dims = _check_sequence("dims", dims, 5, 2)
        if any(d % 2 for d in dims):
            raise ValueError(f"dims must be even (the DLK v2 layer splits channels in halves), got {dims}")
        depths = _check_sequence("depths", depths, 5, 0)
        self.dims, self.depths, self.deep_supervision = dims, depths, bool(deep_supervision)
        self.encoder = _EncoderV2(in_channels, dims, depths, spatial_dims, _drop_rates(drop_path_rate, depths))
        dec_depths = [depths[3 - i] for i in range(4)]
        dec_rates = [list(reversed(r)) for r in reversed(_drop_rates(drop_path_rate, depths)[:4])]
        self.decoder = _DecoderV2(out_channels, dims, dec_depths, spatial_dims, dec_rates)
        set_fast_path(self, self._channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = self._prepare(x)
        features, saliency = self.encoder(x)
        outs = self.decoder(features, saliency, self._head, self.deep_supervision)
        return outs if self.deep_supervision else outs[0]


class _EncoderV2(nn.Module):
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
        self.fast = True

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        saliency = self.saliency(x)
        features = []
        for down, norm, stage in zip(self.downsample_layers, self.norm_layers, self.stages):
            x = stage(norm(_dense(down, x, self.fast)))
            features.append(x)
        return features, saliency


class _DecoderV2(nn.Module):
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
        self.final_layer = ConvBlock(dims[0], dims[0], spatial_dims)
        self.output_layer = conv(dims[0], out_channels, kernel_size=1)
        self.fast = True

    def forward(self, features, saliency, head, deep_supervision: bool) -> tuple[torch.Tensor, ...]:
        x = features[4]
        seg = []
        for i in range(4):
            x = self.norm_layers[i](_up(self.upsample_layers[i], x, self.fast))
            x = self.stages[i](self.steps[i](x, features[3 - i]))
            if deep_supervision:
                seg.append(head(self.seg_layers[i], x))
        x = self.final_layer(self.final_fusion(_up(self.stem, x, self.fast), saliency))
        return (head(self.output_layer, x), *reversed(seg))


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
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self._init_common(in_channels, out_channels, spatial_dims, channels_last)
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
        self.saliency = ConvBlock(in_channels, dims[0], sd)
        self.final_layer = ConvBlock(dims[0], dims[0], sd)
        self.dff = DFF(dims[0], sd)
        self.output_layer = conv(dims[0], out_channels, kernel_size=1)
        set_fast_path(self, self._channels_last)

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


class _EncoderV1(nn.Module):
    def __init__(self, in_channels, dims, depths, spatial_dims, rates) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        self.downsample_layers = nn.ModuleList(
            [conv(in_channels, dims[0], kernel_size=7, stride=2, padding=3)]
            + [conv(dims[i], dims[i + 1], kernel_size=2, stride=2) for i in range(3)]
        )
        self.norm_layers = nn.ModuleList(LayerNormChannels(d) for d in dims[:4])
        self.stages = nn.ModuleList(_stage(dims[i], depths[i], spatial_dims, 1, rates[i]) for i in range(4))
        self.fast = True

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for down, norm, stage in zip(self.downsample_layers, self.norm_layers, self.stages):
            x = stage(norm(_dense(down, x, self.fast)))
            skips.append(x)
        return skips


class _BottleneckV1(nn.Module):
    def __init__(self, dims, depth, spatial_dims, rates) -> None:
        super().__init__()
        self.downsample_layer = conv_type(spatial_dims)(dims[3], dims[4], kernel_size=2, stride=2)
        self.norm_layer1 = LayerNormChannels(dims[4])
        self.stage = _stage(dims[4], depth, spatial_dims, 1, rates)
        self.upsample_layer = conv_transpose_type(spatial_dims)(dims[4], dims[3], kernel_size=2, stride=2)
        self.norm_layer2 = LayerNormChannels(dims[3])
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(self.norm_layer1(_dense(self.downsample_layer, x, self.fast)))
        return self.norm_layer2(_up(self.upsample_layer, x, self.fast))


class _DecoderV1(nn.Module):
    def __init__(self, dims, depths, spatial_dims, rates) -> None:
        super().__init__()
        conv_t = conv_transpose_type(spatial_dims)
        widths = [dims[3 - i] for i in range(4)]  # 384, 192, 96, 48
        outs = [*widths[1:], dims[0]]  # 192, 96, 48, 48
        self.steps = nn.ModuleList(DFF(w, spatial_dims) for w in widths)
        self.stages = nn.ModuleList(_stage(w, d, spatial_dims, 1, r) for w, d, r in zip(widths, depths, rates))
        self.upsample_layers = nn.ModuleList(conv_t(w, o, kernel_size=2, stride=2) for w, o in zip(widths, outs))
        self.norm_layers = nn.ModuleList(LayerNormChannels(o) for o in outs)
        self.fast = True

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stage_outputs = []
        for i in range(4):
            x = self.stages[i](self.steps[i](x, skips[3 - i]))
            stage_outputs.append(x)
            x = self.norm_layers[i](_up(self.upsample_layers[i], x, self.fast))
        return x, stage_outputs


def _plain(value):
    """JSON-able copy of a kwarg (tuples → lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _build(name: str, cls: type[_DNetBase], preset: dict, kwargs: dict) -> _DNetBase:
    model = cls(**{**preset, **kwargs})
    model.config = {"name": name, "kwargs": {k: _plain(v) for k, v in kwargs.items()}}
    return model


@register_model("dnet")
def dnet(**kwargs) -> DNet:
    """D-Net v2 with the official defaults (dims 48…768, depths 2, deep supervision)."""
    return _build("dnet", DNet, {}, kwargs)


@register_model("dnet_v1")
def dnet_v1(**kwargs) -> DNetV1:
    """D-Net v1 with the official defaults (dims 48…768, no deep supervision)."""
    return _build("dnet_v1", DNetV1, {}, kwargs)


@register_model("dnet_small")
def dnet_small(**kwargs) -> DNet:
    """Laptop preset of D-Net v2: dims 16, 32, 64, 128, 256 (≈4.4 M parameters)."""
    return _build("dnet_small", DNet, {"dims": (16, 32, 64, 128, 256)}, kwargs)
