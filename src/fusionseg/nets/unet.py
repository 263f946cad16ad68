"""Dimension-generic U-Net whose skip fusion is selectable (pure PyTorch).

Every decoder stage upsamples (transposed conv ×2 to the skip's width), fuses with the encoder
skip through ``create_fusion(fusion, channels, spatial_dims)`` called as ``fusion(up, skip)``
(both (B, C, *S) → (B, C, *S)), then runs the same conv block. Only the fusion differs between
``"concat"`` (1×1 projection of the concatenation), ``"add"``, ``"dff"`` and ``"tif"``, so
fusions are compared on one backbone at equal structure.

Cost of ``"tif"``: TIF runs global self-attention over all voxels of a skip. At the highest
resolution that is N = H·W (2D) or D·H·W (3D) tokens — O(N²) compute: QKᵀ and AV over inner
widths 64 + 96 cost 4·N²·160 FLOP ≈ 54 GFLOP at N = 96² = 9,216, and 64³ volumes are out of
reach. ``fusion_levels`` picks the skip levels (0 = full resolution, ``len(features) - 2`` =
deepest skip) that get the chosen fusion; the others use ``"concat"``, e.g. ``fusion_levels=(2,)``
is the deepest skip of a 4-level U-Net. By default every skip uses the fusion, except for
``"tif"``, which defaults to the deepest skip only; pass the same ``fusion_levels`` to every
fusion for a like-for-like ablation.

3D by default (``spatial_dims=2`` for images).

Example:
    >>> net = create_model("unet", in_channels=1, out_channels=3, spatial_dims=2, features=(8, 16, 32), fusion="dff")
    >>> net(torch.randn(2, 1, 64, 64)).shape
    torch.Size([2, 3, 64, 64])
    >>> net.size_multiple, net.config["name"]
    (4, 'unet')
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fusionseg.fusion import create_fusion, default_fusion_levels, list_fusions
from fusionseg.layers import batch_norm_type, conv_transpose_type, conv_type
from fusionseg.nets.base import SegmentationNet
from fusionseg.nets.registry import register_model

__all__ = ["FusionUNet", "UNetConvBlock", "unet"]

_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _norm(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    if kind == "instance":
        return _INSTANCE_NORM[spatial_dims](channels, affine=True)
    return batch_norm_type(spatial_dims)(channels)


class UNetConvBlock(nn.Module):
    """Two ``conv3×3 → norm → LeakyReLU(0.01)`` layers; the first may stride (downsampling).

    Example:
        >>> UNetConvBlock(4, 8, spatial_dims=3, stride=2)(torch.randn(1, 4, 8, 8, 8)).shape
        torch.Size([1, 8, 4, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, stride: int = 1, norm: str = "instance"):
        super().__init__()
        conv = conv_type(spatial_dims)
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels, spatial_dims)
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = _norm(norm, out_channels, spatial_dims)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(x)))


class FusionUNet(SegmentationNet):
    """U-Net encoder/decoder with a pluggable skip fusion.

    Args:
        in_channels: image channels C.
        out_channels: classes K (logits).
        spatial_dims: 3 (default) or 2.
        features: channels per level, full resolution first; depth = ``len(features)`` levels
            with ``len(features) - 1`` downsamplings (stride-2 convs), so ``size_multiple = 2**(depth-1)``.
        fusion: skip fusion name from :func:`fusionseg.fusion.list_fusions` (``"concat"``, ``"add"``,
            ``"dff"``, ``"tif"``, ...).
        fusion_levels: skip levels that use ``fusion`` (0 = full resolution); the rest use
            ``"concat"``. None = every level, except for ``"tif"``: the deepest skip only.
        deep_supervision: also return 1×1-conv logits of the lower decoder stages
            (tuple, full resolution first, each half the size of the previous).
        norm: ``"instance"`` (default, robust to batch size 1-2) or ``"batch"``.

    Input (B, C, *S) with every spatial size a multiple of ``size_multiple``; output (B, K, *S).
    Works with channels-last inputs/weights (``model.to(memory_format=torch.channels_last)``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        spatial_dims: int = 3,
        features: Sequence[int] = (16, 32, 64, 128),
        fusion: str = "concat",
        fusion_levels: Sequence[int] | None = None,
        deep_supervision: bool = False,
        norm: str = "instance",
    ) -> None:
        super().__init__(in_channels, out_channels, spatial_dims)
        features = tuple(features) if not isinstance(features, (str, bytes)) else ()
        if len(features) < 2 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features):
            raise ValueError(
                f"features must be >= 2 positive ints (channels per level), e.g. (16, 32, 64, 128); got {features!r}"
            )
        fusion = str(fusion).lower()
        if fusion not in list_fusions():
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(list_fusions())}")
        if norm not in ("instance", "batch"):
            raise ValueError(f'norm must be "instance" or "batch", got {norm!r}')
        num_skips = len(features) - 1
        if fusion_levels is None:  # the fusion's own default (TIF: the deepest skip only)
            levels = default_fusion_levels(fusion, range(num_skips))
        else:
            levels = tuple(sorted(set(fusion_levels)))
            if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_skips for i in levels):
                raise ValueError(
                    f"fusion_levels must be levels in 0..{num_skips - 1} (0 = full resolution); got {fusion_levels!r}"
                )
        self.features, self.fusion, self.fusion_levels = features, fusion, levels
        self.deep_supervision = bool(deep_supervision)
        self.size_multiple = 2**num_skips
        dims = self.spatial_dims

        self.encoder = nn.ModuleList(
            UNetConvBlock(in_channels if i == 0 else features[i - 1], f, dims, stride=1 if i == 0 else 2, norm=norm)
            for i, f in enumerate(features)
        )
        up = conv_transpose_type(dims)
        # Decoder stage i (i = 0 … num_skips-1) works at level i: upsample level i+1 → fuse with skip i → block.
        self.upsample = nn.ModuleList(
            up(features[i + 1], features[i], kernel_size=2, stride=2) for i in range(num_skips)
        )
        self.fusions = nn.ModuleList(
            create_fusion(fusion if i in levels else "concat", features[i], spatial_dims=dims) for i in range(num_skips)
        )
        self.decoder = nn.ModuleList(UNetConvBlock(features[i], features[i], dims, norm=norm) for i in range(num_skips))
        conv = conv_type(dims)
        num_heads = num_skips if self.deep_supervision else 1
        self.heads = nn.ModuleList(conv(features[i], out_channels, kernel_size=1) for i in range(num_heads))
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming init of the backbone convs (fusion modules keep their own init)."""
        convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        for part in (self.encoder, self.upsample, self.decoder, self.heads):
            for m in part.modules():
                if isinstance(m, convs):
                    nn.init.kaiming_normal_(m.weight, a=0.01)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self.check_input(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        outputs = []
        for i in reversed(range(len(self.decoder))):
            x = self.upsample[i](x)
            x = self.decoder[i](self.fusions[i](x, skips[i]))
            if i < len(self.heads):
                outputs.append(self.heads[i](x))
        if not self.deep_supervision:
            return outputs[-1]
        return tuple(reversed(outputs))

    def extra_repr(self) -> str:
        return f"features={self.features}, fusion={self.fusion!r}, fusion_levels={self.fusion_levels}"


@register_model("unet")
def unet(**kwargs) -> FusionUNet:
    """Registered factory ``create_model("unet", ...)``: :class:`FusionUNet` with the same arguments."""
    return FusionUNet(**kwargs)
