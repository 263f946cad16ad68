"""nnU-Net adapter for :func:`fusionseg.plug.plug_fusion`: dynamic-network-architectures ``PlainConvUNet`` and
``ResidualEncoderUNet`` (both decode with ``UNetDecoder``; imports dynamic_network_architectures).

``UNetDecoder`` runs every stage in one loop: stage ``s`` (0 = deepest) is ``transpconvs[s]`` →
``cat([up, skip])`` → ``stages[s]`` → ``seg_layers[s]``. Sites are ``decoder.stages.<s>`` with readers
``stages[s].convs[0].conv`` (also referenced as ``...all_modules.0``; both references are replaced);
the fusion of stage ``s`` lives at ``decoder.fusion.<s>``. The transposed convs already emit the skip width.

Example:
    >>> [s.name for s in find_sites(net)]  # a 4-stage PlainConvUNet
    ['decoder.stages.2', 'decoder.stages.1', 'decoder.stages.0']
"""

from __future__ import annotations

from typing import Any

import torch
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from fusionseg.plug.core import Site

__all__ = ["FusedUNetDecoder", "find_sites", "init_function"]


class FusedUNetDecoder(UNetDecoder):
    """``UNetDecoder`` whose stages listed in ``fusion`` (``nn.ModuleDict`` keyed by stage index) fuse instead of
    concatenating; the other stages, deep supervision and the output order are unchanged."""

    fusion: nn.ModuleDict

    def forward(self, skips):
        x = skips[-1]
        seg_outputs = []
        last = len(self.stages) - 1
        for s in range(len(self.stages)):
            up, skip = self.transpconvs[s](x), skips[-(s + 2)]
            key = str(s)
            x = self.fusion[key](up, skip) if key in self.fusion else torch.cat((up, skip), 1)
            x = self.stages[s](x)
            if self.deep_supervision or s == last:
                seg_outputs.append(self.seg_layers[s](x))
        seg_outputs = seg_outputs[::-1]  # largest resolution first
        return seg_outputs if self.deep_supervision else seg_outputs[0]


def find_sites(model: nn.Module) -> list[Site]:
    """Every decoder stage of a ``PlainConvUNet`` / ``ResidualEncoderUNet``, highest resolution first."""
    decoder: Any = getattr(model, "decoder", None)  # dynamic_network_architectures ships no types
    if type(decoder) is not UNetDecoder:
        raise ValueError(
            f"{type(model).__name__}.decoder is a {type(decoder).__name__}, not UNetDecoder; plug_fusion supports "
            "the nnU-Net decoder only"
        )
    n = len(decoder.stages)
    skip_widths = decoder.encoder.output_channels
    sites = []
    for s in range(n):
        transp = decoder.transpconvs[s]
        reader = decoder.stages[s].convs[0].conv
        sites.append(
            Site(
                f"decoder.stages.{s}",
                n - 1 - s,
                transp.out_channels,
                skip_widths[-(s + 2)],
                transp,
                (reader,),
                decoder,
                FusedUNetDecoder,
                key=str(s),
            )
        )
    return sorted(sites, key=lambda site: site.level)


def init_function(model: nn.Module):
    """nnU-Net's He initialisation (``InitWeights_He(1e-2)``), as ``network.apply(network.initialize)`` does."""
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He

    return InitWeights_He(1e-2)
