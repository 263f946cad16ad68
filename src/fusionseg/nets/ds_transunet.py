"""DS-TransUNet: dual-scale Swin encoders fused by TIF (arXiv 2106.06716; spec ``specs/ds_transunet.md``).

Two Swin v1 encoders (patch 4 and patch 8) → four :class:`~fusionseg.fusion.TIF` modules in
paired form → fusion conv blocks ``change1..4`` → three Swin decoder blocks, two CNN decoder
blocks with image-stem skips → ``final`` plus two deep-supervision heads. Parameter names match
the official ``UNet(dim=128, n_class=1)`` so its checkpoints load with ``strict=True``.

Registered presets: ``"ds_transunet"`` (official, 171,441,329 parameters with one class) and
``"ds_transunet_small"`` (dim 32, shallow, trains on a laptop CPU at 256²). 2D and 3D.

Example:
    >>> net = create_model("ds_transunet_small", in_channels=1, out_channels=2)
    >>> [o.shape for o in net(torch.randn(1, 1, 64, 64))]
    [torch.Size([1, 2, 64, 64]), torch.Size([1, 2, 64, 64]), torch.Size([1, 2, 64, 64])]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fusionseg.fusion import TIF
from fusionseg.fusion.tif import Attention as TIFAttention
from fusionseg.layers import check_spatial_dims, conv_type, max_pool_type
from fusionseg.nets.registry import register_model
from fusionseg.nets.swin import SwinEncoder, SwinLayer, WindowAttention, check_attention_impl, linear_rates

__all__ = [
    "DSTransUNet",
    "crop_to",
    "ds_transunet",
    "ds_transunet_small",
    "pad_to_multiple",
    "set_attention_impl",
    "set_use_checkpoint",
]


# ---------------------------------------------------------------------------------------------
# input sizes
# ---------------------------------------------------------------------------------------------


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant", value: float = 0.0):
    """Pad (B, C, *S) at the end of every spatial dim up to a multiple of ``multiple``.

    Returns ``(padded, crop_info)``; :func:`crop_to` undoes it on any (B, K, *S') output.

    Example:
        >>> y, info = pad_to_multiple(torch.randn(1, 3, 100, 70), 64)
        >>> y.shape, crop_to(y, info).shape
        (torch.Size([1, 3, 128, 128]), torch.Size([1, 3, 100, 70]))
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    spatial = tuple(int(s) for s in x.shape[2:])
    pads = [(-s) % multiple for s in spatial]
    if any(pads):
        flat: list[int] = []
        for p in reversed(pads):
            flat += [0, p]
        x = F.pad(x, flat, mode=mode, value=value) if mode == "constant" else F.pad(x, flat, mode=mode)
    return x, {"spatial": spatial}


def crop_to(y: torch.Tensor, crop_info: dict) -> torch.Tensor:
    """Crop the trailing spatial dims of ``y`` back to ``crop_info["spatial"]`` (from :func:`pad_to_multiple`)."""
    spatial = crop_info["spatial"]
    return y[(..., *(slice(0, s) for s in spatial))]


def _nearest_multiple(s: int, m: int) -> int:
    return max(m, round(s / m) * m)


# ---------------------------------------------------------------------------------------------
# blocks (official names in comments)
# ---------------------------------------------------------------------------------------------


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm(32) as in the original; fewer groups (a divisor) for narrow presets."""
    return nn.GroupNorm(math.gcd(channels, groups), channels)


class ConvBlock(nn.Module):
    """``conv`` = [pool] → (3×3 conv → GN → ReLU) × 2 (official ``change_k`` / ``down2``)."""

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int = 2, pool: bool = False) -> None:
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

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int = 2) -> None:
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
        attention_impl: str,
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
            attention_impl=attention_impl,
        )
        self.conv_relu = nn.Sequential(conv_type(spatial_dims)(mid, mid // 2, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.layer(self.up(x).movedim(1, -1))
        return self.conv_relu(x.movedim(-1, 1))


class SwinDecoderBlock(nn.Module):
    """Swin decoder block: ``up`` (SwinUp on x), ``conv2`` (1×1 + ReLU on the skip), ``conv_relu`` (3×3 + ReLU).

    x (B, C, *S), skip (B, C/2, *2S) → (B, C/2, *2S).
    """

    def __init__(
        self, in_ch: int, depth: int, num_heads: int, window_size, drop_path, spatial_dims, use_checkpoint, impl
    ):
        super().__init__()
        conv = conv_type(spatial_dims)
        self.up = SwinUp(in_ch, depth, num_heads, window_size, drop_path, spatial_dims, use_checkpoint, impl)
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


class ExplicitTIFAttention(TIFAttention):
    """TIF attention with the original's explicit (N × N) matrix: ``softmax(q·kᵀ·scale)·v``.

    Used through :func:`set_attention_impl` (class swap: same parameters, same names).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = attn @ v
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


def set_attention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every Swin window attention and TIF attention in ``model`` to "sdpa" or "explicit".

    Weights and state_dict names are unchanged (TIF attention modules change class only:
    :class:`fusionseg.fusion.tif.Attention` for "sdpa", :class:`ExplicitTIFAttention` for "explicit").
    Returns ``model``.
    """
    check_attention_impl(impl)
    for m in model.modules():
        if isinstance(m, WindowAttention):
            m.attention_impl = impl
        elif isinstance(m, TIFAttention):
            m.__class__ = ExplicitTIFAttention if impl == "explicit" else TIFAttention
    if isinstance(model, DSTransUNet):
        model.attention_impl = impl
    return model


def set_use_checkpoint(model: nn.Module, flag: bool) -> nn.Module:
    """Turn activation checkpointing of every Swin layer (and of DSTransUNet's fusion stages) on/off."""
    for m in model.modules():
        if isinstance(m, (SwinLayer, DSTransUNet)):
            m.use_checkpoint = bool(flag)
    return model


# ---------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------


class DSTransUNet(nn.Module):
    """Dual-Swin Transformer U-Net with TIF fusion (2D, or 3D with 3D windows).

    Input (B, in_channels, *S) with every side a multiple of :attr:`size_multiple` (64; use
    :func:`pad_to_multiple` / :func:`crop_to` otherwise). Output: logits (B, out_channels, *S),
    or with ``deep_supervision`` the tuple ``(final, loss1, loss2)``, all at full resolution.

    Args:
        in_channels, out_channels, spatial_dims: image channels, classes, 2 or 3.
        deep_supervision: return the two auxiliary heads too (the original returns all three).
        dim: width of the main branch (embed dim of the patch-4 Swin; 128 in the original).
        depths, num_heads, drop_path_rate: main Swin encoder (Swin-B: (2,2,18,2), (4,8,16,32), 0.5).
        embed_dim2, depths2, num_heads2, drop_path_rate2: patch-8 Swin (Swin-T: 96, (2,2,6,2), (3,6,12,24), 0.2).
        decoder_heads, decoder_depth, decoder_drop_path: Swin decoder blocks ((8,4,2), 2, 0.2).
        window_size: Swin window (7; int or per-dim tuple).
        tif: keyword arguments for every TIF (heads/dim_head/mlp per branch; defaults = the original).
        aux_relu: keep the original's ReLU on the auxiliary heads (non-negative logits).
        use_checkpoint: activation checkpointing of Swin blocks, TIFs and fusion blocks.
        attention_impl: "sdpa" (fast) or "explicit" (the original's N×N attention matrices).

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
        attention_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        nd = check_spatial_dims(spatial_dims)
        check_attention_impl(attention_impl)
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("dim", dim),
            ("embed_dim2", embed_dim2),
        ):
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
        self.spatial_dims = nd
        self.deep_supervision = bool(deep_supervision)
        self.aux_relu = bool(aux_relu)
        self.use_checkpoint = bool(use_checkpoint)
        self.attention_impl = attention_impl
        self.size_multiple = 64  # patch 8 · three 2× merges of the second branch
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
            attention_impl=attention_impl,
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
            attention_impl=attention_impl,
        )
        wins = self.encoder.layers[0].window_size
        self.layer1 = SwinDecoderBlock(
            8 * dim, decoder_depth, decoder_heads[0], wins, decoder_drop_path, nd, use_checkpoint, attention_impl
        )
        self.layer2 = SwinDecoderBlock(
            4 * dim, decoder_depth, decoder_heads[1], wins, decoder_drop_path, nd, use_checkpoint, attention_impl
        )
        self.layer3 = SwinDecoderBlock(
            2 * dim, decoder_depth, decoder_heads[2], wins, decoder_drop_path, nd, use_checkpoint, attention_impl
        )
        self.layer4 = ConvDecoderBlock(dim, dim // 2, dim // 2, nd)
        self.layer5 = ConvDecoderBlock(dim // 2, dim // 4, dim // 4, nd)
        conv = conv_type(nd)
        self.down1 = conv(in_channels, dim // 4, 1)
        self.down2 = ConvBlock(dim // 4, dim // 2, nd, pool=True)
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
            self.add_module(f"change{k + 1}", ConvBlock(width_s + width_l, width_l, nd))
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")  # r_k' onto e_k's grid (official ``m1``)
        set_attention_impl(self, attention_impl)

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

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError naming the nearest valid size when ``x`` does not fit the network."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"DSTransUNet(spatial_dims={self.spatial_dims}) expects input (B, C, *S) with "
                f"{self.spatial_dims} spatial dims, got shape {tuple(x.shape)}"
            )
        in_ch = self.down1.in_channels
        if x.shape[1] != in_ch:
            raise ValueError(f"DSTransUNet was built with in_channels={in_ch}, got input with {x.shape[1]} channels")
        spatial = tuple(x.shape[2:])
        m = self.size_multiple
        if any(s % m for s in spatial):
            nearest = tuple(_nearest_multiple(s, m) for s in spatial)
            raise ValueError(
                f"DSTransUNet input size {spatial} must be a multiple of {m} per side; nearest valid size "
                f"{nearest} (or pad with fusionseg.nets.ds_transunet.pad_to_multiple and crop back with crop_to)"
            )

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
# registered presets (contract 1)
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


def _build(name: str, defaults: dict[str, Any], **kwargs: Any) -> DSTransUNet:
    """``DSTransUNet(**defaults, **kwargs)`` with ``model.config`` recording the registry name and kwargs."""
    params = {**defaults, **kwargs}
    model = DSTransUNet(**params)
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    if isinstance(plain.get("tif"), dict):
        plain["tif"] = dict(plain["tif"])
    model.config = {"name": name, "kwargs": plain}
    return model


@register_model("ds_transunet")
def ds_transunet(
    in_channels: int = 3, out_channels: int = 1, spatial_dims: int = 2, deep_supervision: bool = True, **kwargs
) -> DSTransUNet:
    """The official DS-TransUNet (dim 128, Swin-B + Swin-T encoders, window 7)."""
    return _build(
        "ds_transunet", {}, in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims,
        deep_supervision=deep_supervision, **kwargs,
    )  # fmt: skip


@register_model("ds_transunet_small")
def ds_transunet_small(
    in_channels: int = 3, out_channels: int = 1, spatial_dims: int = 2, deep_supervision: bool = True, **kwargs
) -> DSTransUNet:
    """A CPU preset: dim 32, depths (2,2,2,2) + (1,1,1,1), narrow TIFs (6.63 M parameters with 1 class)."""
    return _build(
        "ds_transunet_small", _SMALL, in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims,
        deep_supervision=deep_supervision, **kwargs,
    )  # fmt: skip
