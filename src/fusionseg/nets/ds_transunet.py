"""DS-TransUNet: dual-scale Swin encoders fused by TIF (Lin et al., arXiv 2106.06716).

Two Swin v1 encoders (patch 4 and patch 8) → four :class:`~fusionseg.fusion.TIF` modules in
paired form → fusion conv blocks ``change1..4`` → three Swin decoder blocks, two CNN decoder
blocks with image-stem skips → ``final`` plus two deep-supervision heads. Parameter names match
the official ``UNet(dim=128, n_class=1)`` so its checkpoints load with ``strict=True``.

Registered presets: ``"ds_transunet"`` (official, 171,441,329 parameters with one class) and
``"ds_transunet_small"`` (dim 32, shallow, trains on a laptop CPU at 256²). 2D by default — the
paper's network, and the one exception to the library's ``spatial_dims=3`` default — and 3D.

The attention (Swin windows and TIF) has two implementations with the same numbers, switched with
:func:`fusionseg.kernels.set_reference_ops`: SDPA (default) or the original's explicit N×N matrices.

Example:
    >>> net = create_model("ds_transunet_small", in_channels=1, out_channels=2)
    >>> [o.shape for o in net(torch.randn(1, 1, 64, 64))]
    [torch.Size([1, 2, 64, 64]), torch.Size([1, 2, 64, 64]), torch.Size([1, 2, 64, 64])]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fusionseg.fusion import TIF
from fusionseg.kernels.switch import set_reference_ops
from fusionseg.layers import conv_type, max_pool_type
from fusionseg.nets.base import SegmentationNet, crop_to, pad_to_multiple
from fusionseg.nets.registry import register_model
from fusionseg.nets.swin import SwinEncoder, SwinLayer, linear_rates

__all__ = [
    "DSTransUNet",
    "GroupNormConvBlock",
    "crop_to",
    "ds_transunet",
    "ds_transunet_small",
    "pad_to_multiple",
    "set_attention_impl",
    "set_use_checkpoint",
]

SIZE_MULTIPLE = 64  # patch 8 · three 2× merges of the second branch


# ---------------------------------------------------------------------------------------------
# blocks (official names in comments)
# ---------------------------------------------------------------------------------------------


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm(32) as in the original; fewer groups (a divisor) for narrow presets."""
    return nn.GroupNorm(math.gcd(channels, groups), channels)


class GroupNormConvBlock(nn.Module):
    """``conv`` = [pool] → (3×3 conv → GN → ReLU) × 2 (official ``change_k`` / ``down2``)."""

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int, pool: bool = False) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        layers: list[nn.Module] = [max_pool_type(spatial_dims)(2)] if pool else []
        layers += [conv(in_ch, out_ch, 3, padding=1), _group_norm(out_ch), nn.ReLU(inplace=True)]
        layers += [conv(out_ch, out_ch, 3, padding=1), _group_norm(out_ch), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpConv(nn.Module):
    """``up`` = nearest ×2 → 3×3 conv → GN → ReLU (official ``up_conv``)."""

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv_type(spatial_dims)(in_ch, out_ch, 3, padding=1),
            _group_norm(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class SwinUp(nn.Module):
    """UpConv (C → C/2) → 2-block Swin layer at C/2 → 1×1 conv (C/2 → C/4) → ReLU."""

    def __init__(
        self,
        in_ch: int,
        depth: int,
        num_heads: int,
        window_size: Sequence[int],
        drop_path: float,
        spatial_dims: int,
        use_checkpoint: bool,
    ) -> None:
        super().__init__()
        mid = in_ch // 2
        self.up = UpConv(in_ch, mid, spatial_dims)
        rates = linear_rates(drop_path, depth)
        self.layer = SwinLayer(
            mid,
            depth,
            num_heads,
            window_size,
            drop_path=rates,
            spatial_dims=spatial_dims,
            use_checkpoint=use_checkpoint,
        )
        self.conv_relu = nn.Sequential(conv_type(spatial_dims)(mid, mid // 2, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.layer(self.up(x).movedim(1, -1))
        return self.conv_relu(x.movedim(-1, 1))


class SwinDecoderBlock(nn.Module):
    """Swin decoder block: ``up`` (SwinUp on x), ``conv2`` (1×1 + ReLU on the skip), ``conv_relu`` (3×3 + ReLU).

    x (B, C, *S), skip (B, C/2, *2S) → (B, C/2, *2S).
    """

    def __init__(self, in_ch: int, num_heads: int, depth: int, window_size, drop_path, spatial_dims, use_checkpoint):
        super().__init__()
        conv = conv_type(spatial_dims)
        self.up = SwinUp(in_ch, depth, num_heads, window_size, drop_path, spatial_dims, use_checkpoint)
        self.conv2 = nn.Sequential(conv(in_ch // 2, in_ch // 4, 1), nn.ReLU(inplace=True))
        self.conv_relu = nn.Sequential(conv(in_ch // 2, in_ch // 2, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_relu(torch.cat([self.conv2(skip), self.up(x)], 1))


class ConvDecoderBlock(nn.Module):
    """CNN decoder block: ``up`` (UpConv in → out) → concat(skip, x) → ``conv_relu`` (3×3 + ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int, spatial_dims: int) -> None:
        super().__init__()
        self.up = UpConv(in_ch, out_ch, spatial_dims)
        self.conv_relu = nn.Sequential(conv_type(spatial_dims)(skip_ch + out_ch, out_ch, 3, padding=1), nn.ReLU(True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_relu(torch.cat([skip, self.up(x)], 1))


def set_attention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Deprecated: ``"explicit"`` → ``set_reference_ops(model, True)``; ``"sdpa"`` → ``(model, False)``."""
    _warn_attention_impl()
    return set_reference_ops(model, _explicit_attention(impl))


def _explicit_attention(impl: str) -> bool:
    if impl not in ("sdpa", "explicit"):
        raise ValueError(f'attention_impl must be "sdpa" or "explicit", got {impl!r}')
    return impl == "explicit"


def _warn_attention_impl() -> None:
    warnings.warn(
        "DS-TransUNet's attention_impl / set_attention_impl are deprecated and will be removed in the next release; "
        "use fusionseg.kernels.set_reference_ops(net, True) for the explicit attention matrices (False: SDPA)",
        DeprecationWarning,
        stacklevel=3,
    )


def set_use_checkpoint(model: nn.Module, flag: bool) -> nn.Module:
    """Turn activation checkpointing of every Swin layer (and of DSTransUNet's fusion stages) on/off."""
    for m in model.modules():
        if isinstance(m, (SwinLayer, DSTransUNet)):
            m.use_checkpoint = bool(flag)
    return model


# ---------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------


class DSTransUNet(SegmentationNet):
    """Dual-Swin Transformer U-Net with TIF fusion (2D by default, or 3D with 3D windows).

    Input (B, in_channels, *S) with every side a multiple of :attr:`size_multiple` (64; use
    :func:`pad_to_multiple` / :func:`crop_to` otherwise). Output: logits (B, out_channels, *S),
    or with ``deep_supervision`` the tuple ``(final, loss1, loss2)``, all at full resolution.

    Args:
        in_channels, out_channels, spatial_dims: image channels, classes, 2 (default, the paper's) or 3.
        deep_supervision: return the two auxiliary heads too (the original returns all three).
        dim: width of the main branch (embed dim of the patch-4 Swin; 128 in the original).
        depths, num_heads, drop_path_rate: main Swin encoder (Swin-B: (2,2,18,2), (4,8,16,32), 0.5).
        embed_dim2, depths2, num_heads2, drop_path_rate2: patch-8 Swin (Swin-T: 96, (2,2,6,2), (3,6,12,24), 0.2).
        decoder_heads, decoder_depth, decoder_drop_path: Swin decoder blocks ((8,4,2), 2, 0.2).
        window_size: Swin window (7; int or per-dim tuple).
        tif: keyword arguments for every TIF (heads/dim_head/mlp per branch; defaults = the original).
        aux_relu: keep the original's ReLU on the auxiliary heads (non-negative logits).
        use_checkpoint: activation checkpointing of Swin blocks, TIFs and fusion blocks.
        attention_impl: deprecated; ``"explicit"`` = ``set_reference_ops(net, True)`` (the original's
            N×N attention matrices), ``"sdpa"`` = the default.

    Example:
        >>> net = DSTransUNet(1, 2, dim=32, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), embed_dim2=24,
        ...                   depths2=(1, 1, 1, 1), num_heads2=(1, 1, 2, 2), decoder_heads=(2, 1, 1))
        >>> net(torch.randn(1, 1, 64, 64))[0].shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        spatial_dims: int = 2,
        deep_supervision: bool = True,
        dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        drop_path_rate: float = 0.5,
        embed_dim2: int = 96,
        depths2: Sequence[int] = (2, 2, 6, 2),
        num_heads2: Sequence[int] = (3, 6, 12, 24),
        drop_path_rate2: float = 0.2,
        decoder_heads: Sequence[int] = (8, 4, 2),
        decoder_depth: int = 2,
        decoder_drop_path: float = 0.2,
        window_size: int | Sequence[int] = 7,
        tif: dict[str, Any] | None = None,
        aux_relu: bool = True,
        use_checkpoint: bool = False,
        attention_impl: str | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, spatial_dims, SIZE_MULTIPLE)
        nd = self.spatial_dims
        explicit = None if attention_impl is None else _explicit_attention(attention_impl)
        for name, value in (("dim", dim), ("embed_dim2", embed_dim2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DSTransUNet {name} must be a positive int, got {value!r}")
        if dim % 4:
            raise ValueError(f"DSTransUNet dim must be a multiple of 4 (stem widths dim/4, dim/2), got {dim}")
        if len(tuple(depths)) != 4 or len(tuple(depths2)) != 4:
            raise ValueError(f"DSTransUNet needs 4 encoder stages; got depths={depths}, depths2={depths2}")
        if len(tuple(decoder_heads)) != 3:
            raise ValueError(f"decoder_heads needs 3 values (layer1..3), got {decoder_heads}")
        for heads, width in zip(decoder_heads, (4 * dim, 2 * dim, dim)):
            if width % heads:
                raise ValueError(
                    f"decoder Swin width {width} is not divisible by its heads {heads}; change decoder_heads"
                )
        self.deep_supervision = bool(deep_supervision)
        self.aux_relu = bool(aux_relu)
        self.use_checkpoint = bool(use_checkpoint)
        self.encoder = SwinEncoder(
            in_channels,
            dim,
            depths,
            num_heads,
            patch_size=4,
            window_size=window_size,
            drop_path_rate=drop_path_rate,
            spatial_dims=nd,
            use_checkpoint=use_checkpoint,
        )
        self.encoder2 = SwinEncoder(
            in_channels,
            embed_dim2,
            depths2,
            num_heads2,
            patch_size=8,
            window_size=window_size,
            drop_path_rate=drop_path_rate2,
            spatial_dims=nd,
            use_checkpoint=use_checkpoint,
        )
        wins = self.encoder.layers[0].window_size
        swin_args = (decoder_depth, wins, decoder_drop_path, nd, use_checkpoint)
        self.layer1 = SwinDecoderBlock(8 * dim, decoder_heads[0], *swin_args)
        self.layer2 = SwinDecoderBlock(4 * dim, decoder_heads[1], *swin_args)
        self.layer3 = SwinDecoderBlock(2 * dim, decoder_heads[2], *swin_args)
        self.layer4 = ConvDecoderBlock(dim, dim // 2, dim // 2, nd)
        self.layer5 = ConvDecoderBlock(dim // 2, dim // 4, dim // 4, nd)
        conv = conv_type(nd)
        self.down1 = conv(in_channels, dim // 4, 1)
        self.down2 = GroupNormConvBlock(dim // 4, dim // 2, nd, pool=True)
        self.final = conv(dim // 4, out_channels, 1)
        # Deep-supervision heads: 1×1 conv (→ ReLU in the original) → nearest upsampling to full size.
        self.loss1 = nn.Sequential(
            conv(8 * dim, out_channels, 1),
            nn.ReLU() if aux_relu else nn.Identity(),
            nn.Upsample(scale_factor=32, mode="nearest"),
        )
        self.loss2 = nn.Sequential(
            conv(dim, out_channels, 1),
            nn.ReLU() if aux_relu else nn.Identity(),
            nn.Upsample(scale_factor=4, mode="nearest"),
        )
        tif_kwargs = dict(tif or {})
        for k in range(4):
            width_s, width_l = embed_dim2 * 2**k, dim * 2**k
            tif_k = TIF(width_s, width_l, spatial_dims=nd, **tif_kwargs)
            self.add_module(f"cross_att_{k + 1}", tif_k)
            self.add_module(f"change{k + 1}", GroupNormConvBlock(width_s + width_l, width_l, nd))
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")  # r_k' onto e_k's grid (official ``m1``)
        if explicit is not None:
            _warn_attention_impl()
            set_reference_ops(self, explicit)

    # -----------------------------------------------------------------------------------------

    def load_pretrained_swin(self, main=None, second=None, patch_embed: str = "resize") -> dict[str, Any]:
        """Load ImageNet Swin checkpoints (local paths or state_dicts) into ``encoder`` / ``encoder2``.

        ``main``: e.g. Swin-B 22k (patch 4); ``second``: e.g. Swin-T (its 4×4 patch kernel is
        resized to 8×8 unless ``patch_embed="skip"``). Returns ``{"encoder": report, "encoder2": report}``
        (see :class:`fusionseg.nets.swin_pretrained.SwinLoadReport`).
        """
        from fusionseg.nets.swin_pretrained import load_swin_pretrained

        reports = {}
        if main is not None:
            reports["encoder"] = load_swin_pretrained(self.encoder, main, patch_embed)
        if second is not None:
            reports["encoder2"] = load_swin_pretrained(self.encoder2, second, patch_embed)
        return reports

    def _run(self, fn, *args):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _fuse(self, k: int, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        tif = getattr(self, f"cross_att_{k}")
        change = getattr(self, f"change{k}")

        def fuse(e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            e, r = tif.forward_paired(e, r)
            return change(torch.cat([e, self.up2(r)], 1))

        return self._run(fuse, e, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(x)
        es = self.encoder(x)
        rs = self.encoder2(x)
        f1, f2, f3, f4 = (self._fuse(k + 1, e, r) for k, (e, r) in enumerate(zip(es, rs)))
        ds1 = self.down1(x)
        ds2 = self.down2(ds1)
        d1 = self.layer1(f4, f3)
        d2 = self.layer2(d1, f2)
        d3 = self.layer3(d2, f1)
        d4 = self.layer4(d3, ds2)
        d5 = self.layer5(d4, ds1)
        out = self.final(d5)
        if not self.deep_supervision:
            return out
        return out, self.loss1(f4), self.loss2(d3)


# ---------------------------------------------------------------------------------------------
# registered presets
# ---------------------------------------------------------------------------------------------

_SMALL = dict(
    dim=32,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 4, 8),
    drop_path_rate=0.1,
    embed_dim2=24,
    depths2=(1, 1, 1, 1),
    num_heads2=(1, 2, 4, 8),
    drop_path_rate2=0.1,
    decoder_heads=(2, 1, 1),
    decoder_depth=2,
    decoder_drop_path=0.1,
    tif=dict(heads_s=1, dim_head_s=32, mlp_s=64, heads_l=1, dim_head_l=32, mlp_l=64),
)


@register_model("ds_transunet")
def ds_transunet(**kwargs: Any) -> DSTransUNet:
    """The official DS-TransUNet (dim 128, Swin-B + Swin-T encoders, window 7; 3 input channels, 1 class, 2D)."""
    return DSTransUNet(**kwargs)


@register_model("ds_transunet_small")
def ds_transunet_small(**kwargs: Any) -> DSTransUNet:
    """A CPU preset: dim 32, depths (2,2,2,2) + (1,1,1,1), narrow TIFs (6.63 M parameters with 1 class)."""
    return DSTransUNet(**{**_SMALL, **kwargs})
