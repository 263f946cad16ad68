"""MONAI adapter for :func:`fusionseg.plug.plug_fusion`: ``BasicUNet``, ``DynUNet``, ``SwinUNETR`` (imports MONAI).

Sites (``cat(upsampled, skip)`` → block), level 0 = highest-resolution skip:

- ``BasicUNet``: ``upcat_1`` … ``upcat_4`` (``UpCat``: ``upsample`` → ``cat([skip, up])`` → ``convs``); readers:
  ``convs.conv_0.conv``. The top ``upcat_1`` upsamples without halving (``features[1]`` channels) while its
  skip has ``features[0]``: when they differ its transposed conv is rebuilt to emit ``features[0]``.
- ``DynUNet``: ``upsamples.0`` (deepest) … ``upsamples.N-1`` (``UnetUpBlock``: ``transp_conv`` →
  ``cat([up, skip])`` → ``conv_block``); readers: ``conv_block.conv1.conv``.
- ``SwinUNETR``: ``decoder1`` (full resolution) … ``decoder5`` (``UnetrUpBlock``, same layout as DynUNet's);
  readers: ``conv_block.conv1.conv`` and the residual shortcut ``conv_block.conv3.conv``.

Example:
    >>> find_sites(BasicUNet(spatial_dims=2))[0].name
    'upcat_1'
"""

from __future__ import annotations

from typing import Any, cast

import torch
from monai.networks.blocks.dynunet_block import UnetUpBlock
from monai.networks.blocks.unetr_block import UnetrUpBlock
from monai.networks.nets.basic_unet import BasicUNet, UpCat
from monai.networks.nets.dynunet import DynUNet
from monai.networks.nets.swin_unetr import SwinUNETR
from torch import nn
from torch.nn.modules.conv import _ConvNd

from fusionseg.plug.core import Site

__all__ = ["FusedUnetUpBlock", "FusedUnetrUpBlock", "FusedUpCat", "find_sites", "init_function"]


class FusedUpCat(UpCat):
    """``UpCat`` with ``convs(fusion(upsample(x), x_e))`` in place of ``convs(cat([x_e, upsample(x)]))``."""

    fusion: nn.Module

    def forward(self, x: torch.Tensor, x_e: torch.Tensor | None):
        up = self.upsample(x)
        if x_e is None:
            return self.convs(up)
        if self.is_pad:  # as UpCat: replicate-pad the upsampled map by one voxel where sizes differ (odd inputs)
            pad = []
            for d in range(up.ndim - 2):
                pad += [0, int(x_e.shape[-d - 1] != up.shape[-d - 1])]
            up = torch.nn.functional.pad(up, pad, "replicate")
        return self.convs(self.fusion(up, x_e))


class _TransposedUpFusion:
    """``conv_block(fusion(transp_conv(inp), skip))`` in place of ``conv_block(cat([transp_conv(inp), skip]))``."""

    fusion: nn.Module
    conv_block: Any  # the MONAI block's own: UnetBasicBlock (UnetUpBlock) or UnetResBlock (UnetrUpBlock)
    transp_conv: Any

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(self.fusion(self.transp_conv(inp), skip))


class FusedUnetUpBlock(_TransposedUpFusion, UnetUpBlock):
    """DynUNet's ``UnetUpBlock`` with a fusion instead of the concatenation."""


class FusedUnetrUpBlock(_TransposedUpFusion, UnetrUpBlock):
    """SwinUNETR's ``UnetrUpBlock`` with a fusion instead of the concatenation."""


_FUSED = {UpCat: FusedUpCat, UnetUpBlock: FusedUnetUpBlock, UnetrUpBlock: FusedUnetrUpBlock}


def _fused_class(name: str, block: nn.Module) -> type:
    fused = _FUSED.get(type(block))
    if fused is None:
        raise ValueError(
            f"{name} is a {type(block).__name__}, not one of {', '.join(c.__name__ for c in _FUSED)}; "
            "plug_fusion supports the networks' own up-blocks only"
        )
    return fused


def _conv(block: nn.Module, path: str) -> _ConvNd:
    """The convolution at dotted ``path`` in ``block`` (MONAI's ``Convolution`` keeps it as ``.conv``)."""
    return cast(_ConvNd, block.get_submodule(path))


def _transposed_site(name: str, level: int, block: nn.Module) -> Site:
    readers = [_conv(block, "conv_block.conv1.conv")]
    if hasattr(block.conv_block, "conv3"):  # UnetResBlock: 1×1 residual shortcut from the concatenation
        readers.append(_conv(block, "conv_block.conv3.conv"))
    up = _conv(block, "transp_conv.conv").out_channels
    skip = readers[0].in_channels - up
    upsampler = block.get_submodule("transp_conv")
    return Site(name, level, up, skip, upsampler, tuple(readers), block, _fused_class(name, block))


def _basic_unet_sites(model: BasicUNet) -> list[Site]:
    skips = ["conv_0", "down_1.convs", "down_2.convs", "down_3.convs"]  # x0 … x3 (TwoConv)
    sites = []
    for level, skip_path in enumerate(skips):
        name = f"upcat_{level + 1}"
        block = getattr(model, name)
        reader = _conv(block, "convs.conv_0.conv")
        skip = _conv(model, f"{skip_path}.conv_1.conv").out_channels
        up = reader.in_channels - skip
        sites.append(Site(name, level, up, skip, block.upsample, (reader,), block, _fused_class(name, block)))
    return sites


def find_sites(model: nn.Module) -> list[Site]:
    """Every skip concatenation of a MONAI ``BasicUNet``, ``DynUNet`` or ``SwinUNETR``, highest resolution first."""
    if isinstance(model, BasicUNet):
        return _basic_unet_sites(model)
    if isinstance(model, DynUNet):
        n = len(model.upsamples)
        return sorted(
            (_transposed_site(f"upsamples.{i}", n - 1 - i, block) for i, block in enumerate(model.upsamples)),
            key=lambda s: s.level,
        )
    if isinstance(model, SwinUNETR):
        return [_transposed_site(f"decoder{k}", k - 1, getattr(model, f"decoder{k}")) for k in range(1, 6)]
    raise ValueError(f"no MONAI adapter for {type(model).__name__}")


def init_function(model: nn.Module):
    """How the network initialises its convs (DynUNet: Kaiming, a=0.01); the others keep PyTorch's default."""
    if isinstance(model, DynUNet):
        return DynUNet.initialize_weights
    return lambda module: None
