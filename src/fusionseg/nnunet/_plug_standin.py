"""TEMPORARY stand-in for ``fusionseg.plug.plug_fusion`` (issue 12), limited to nnU-Net's ``UNetDecoder``.

Delete this file once ``fusionseg.plug`` exists: :func:`fusionseg.nnunet.networks.plug_fusion`
uses the real one as soon as it can be imported.

``plug_fusion(model, fusion, levels)`` replaces ``cat(upsampled, skip)`` in the decoder of a
dynamic-network-architectures ``PlainConvUNet`` / ``ResidualEncoderUNet`` by
``create_fusion(fusion, C)(upsampled, skip)`` (C = skip width) at the chosen skip levels
(0 = full resolution), and gives the first conv after each fused skip C instead of 2·C inputs.
Every other layer keeps its module and its state_dict name; deep supervision stays switchable
through ``decoder.deep_supervision``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fusionseg.fusion import create_fusion

__all__ = ["plug_fusion"]


class _FusedUNetDecoder(nn.Module):
    """nnU-Net's ``UNetDecoder`` forward with a fusion module in place of each chosen concatenation."""

    def __init__(self, decoder: nn.Module, fusion: str, levels: tuple[int, ...], spatial_dims: int) -> None:
        super().__init__()
        self.deep_supervision = decoder.deep_supervision
        self.encoder = decoder.encoder
        self.num_classes = decoder.num_classes
        self.stages, self.transpconvs, self.seg_layers = decoder.stages, decoder.transpconvs, decoder.seg_layers
        num_skips = len(self.stages)
        self.fusions = nn.ModuleDict()
        for s in range(num_skips):  # decoder stage s works at skip level num_skips - 1 - s
            if num_skips - 1 - s not in levels:
                continue
            first = self.stages[s].convs[0]
            width = first.output_channels
            self.fusions[str(s)] = create_fusion(fusion, width, spatial_dims=spatial_dims)
            old = first.conv
            first.conv = type(old)(
                width, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
            )
            first.all_modules[0] = first.conv
            first.input_channels = width

    def forward(self, skips: Sequence[torch.Tensor]):
        lres_input = skips[-1]
        seg_outputs = []
        for s in range(len(self.stages)):
            x = self.transpconvs[s](lres_input)
            skip = skips[-(s + 2)]
            x = self.fusions[str(s)](x, skip) if str(s) in self.fusions else torch.cat((x, skip), 1)
            x = self.stages[s](x)
            if self.deep_supervision:
                seg_outputs.append(self.seg_layers[s](x))
            elif s == len(self.stages) - 1:
                seg_outputs.append(self.seg_layers[-1](x))
            lres_input = x
        seg_outputs = seg_outputs[::-1]
        return seg_outputs if self.deep_supervision else seg_outputs[0]


def plug_fusion(model: nn.Module, fusion: str, levels: Sequence[int] | None = None) -> nn.Module:
    """Put ``fusion`` at the skips ``levels`` (0 = full resolution; default all, TIF the deepest) of ``model``."""
    decoder = getattr(model, "decoder", None)
    if decoder is None or not all(hasattr(decoder, a) for a in ("stages", "transpconvs", "seg_layers", "encoder")):
        raise ValueError(f"the plug stand-in supports nnU-Net's PlainConvUNet/ResidualEncoderUNet, not {model!r:.80}")
    num_skips = len(decoder.stages)
    if levels is None:
        levels = (num_skips - 1,) if fusion == "tif" else tuple(range(num_skips))
    levels = () if fusion == "concat" else tuple(sorted(set(levels)))  # concat = the original decoder
    if any(not 0 <= i < num_skips for i in levels):
        raise ValueError(f"levels must be in 0..{num_skips - 1} (0 = full resolution), got {levels}")
    spatial_dims = 3 if decoder.encoder.conv_op is nn.Conv3d else 2
    model.decoder = _FusedUNetDecoder(decoder, fusion, levels, spatial_dims)
    return model
