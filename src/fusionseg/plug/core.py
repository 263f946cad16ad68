"""``plug_fusion``: replace the skip concatenations of an existing U-Net-like network by a fusion module.

A *site* is one decoder step ``block(cat(upsampled, skip))``. A small adapter per network family
(:mod:`fusionseg.plug.monai_nets`; :mod:`fusionseg.nnunet.plug_adapter`, registered by
:mod:`fusionseg.nnunet` with :func:`register_adapter`; imported only for a matching network) lists the
sites; everything else is generic and done here, in place:

1. widths: when the upsampled tensor is narrower or wider than the skip, the upsampling layer's last
   convolution is rebuilt to emit the skip's width (as D-Net's decoder does: it upsamples straight to
   the skip width, then fuses); :class:`ValueError` when the upsampler has no convolution to rebuild;
2. the convolutions that read the concatenation (the first conv of the block after it, and a residual
   1×1 shortcut if the block has one) are rebuilt for ``C`` input channels instead of ``2C``;
3. ``create_fusion(fusion, C, spatial_dims)`` is attached as ``<block>.fusion`` (or
   ``<block>.fusion.<stage>`` when one block runs several stages), and the block's class is switched to
   a subclass whose ``forward`` calls ``fusion(upsampled, skip)`` instead of ``torch.cat``.

Nothing else changes: untouched layers keep their objects, weights and ``state_dict`` keys.

Example:
    >>> from monai.networks.nets import BasicUNet
    >>> net = plug_fusion(BasicUNet(spatial_dims=2, features=(8, 8, 16, 32, 64, 8)), "dff")
    >>> net(torch.randn(1, 1, 32, 32)).shape
    torch.Size([1, 2, 32, 32])
    >>> net.fusion_plug.levels
    (0, 1, 2, 3)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from fusionseg.fusion import create_fusion, default_fusion_levels, list_fusions

__all__ = [
    "SUPPORTED",
    "PlugRecord",
    "Site",
    "SiteChange",
    "count_parameters",
    "plug_fusion",
    "register_adapter",
    "replace_module",
]

# Supported classes (``module.qualname`` as found in the network's MRO) → adapter module (imported on demand).
_ADAPTERS = {
    "monai.networks.nets.basic_unet.BasicUNet": "fusionseg.plug.monai_nets",
    "monai.networks.nets.dynunet.DynUNet": "fusionseg.plug.monai_nets",
    "monai.networks.nets.swin_unetr.SwinUNETR": "fusionseg.plug.monai_nets",
}
SUPPORTED = (
    "MONAI BasicUNet, DynUNet, SwinUNETR; dynamic-network-architectures (nnU-Net) PlainConvUNet, ResidualEncoderUNet"
)
_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class Site:
    """One ``block(cat(upsampled, skip))`` step of a decoder, as found by a family adapter.

    Attributes:
        name: dotted path of the step, e.g. ``"upcat_4"`` or ``"decoder.stages.2"`` (for messages and reports).
        level: skip level, 0 = the highest-resolution skip.
        up_width, skip_width: channels of the upsampled tensor and of the skip.
        upsampler: module producing the upsampled tensor (its last conv is rebuilt when the widths differ).
        readers: convolutions that read the concatenation (``up_width + skip_width`` input channels).
        owner: module whose ``forward`` concatenates; it receives the fusion.
        fused_class: subclass of ``type(owner)`` whose ``forward`` calls the fusion.
        key: stage key when one owner runs several sites (the fusion goes to ``owner.fusion[key]``).
    """

    name: str
    level: int
    up_width: int
    skip_width: int
    upsampler: nn.Module
    readers: tuple[_ConvNd, ...]
    owner: nn.Module
    fused_class: type
    key: str | None = None


@dataclass
class SiteChange:
    """What :func:`plug_fusion` changed at one site (parameter deltas count weights and biases)."""

    name: str
    level: int
    width: int
    fusion_params: int
    reader_params_delta: int
    upsampler: str = ""  # "ConvTranspose2d 32→16" when the upsampling conv was rebuilt
    upsampler_params_delta: int = 0


@dataclass
class PlugRecord:
    """Stored as ``model.fusion_plug`` by :func:`plug_fusion`; :func:`fusionseg.plug.describe_plug` formats it."""

    network: str
    fusion: str
    levels: tuple[int, ...]
    num_sites: int
    params_before: int
    params_after: int
    changes: list[SiteChange] = field(default_factory=list)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> int:
    """Point every reference to ``old`` inside ``root`` at ``new`` (modules may be shared, e.g. DynUNet's
    ``skip_layers`` or nnU-Net's ``all_modules``); returns the number of references replaced."""
    slots = [(m, name) for m in root.modules() for name, child in m._modules.items() if child is old]
    for parent, name in slots:
        parent._modules[name] = new
    return len(slots)


def conv_like(conv: nn.Module, in_channels: int | None = None, out_channels: int | None = None) -> nn.Module:
    """A fresh conv of ``conv``'s type and settings (kernel, stride, padding, bias, device, dtype) with new widths."""
    if not isinstance(conv, _CONVS) or conv.groups != 1:
        raise ValueError(f"cannot rebuild {conv!r}: only ungrouped Conv2d/3d and ConvTranspose2d/3d are supported")
    kwargs: dict[str, Any] = dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    if isinstance(conv, nn.ConvTranspose2d | nn.ConvTranspose3d):
        kwargs["output_padding"] = conv.output_padding
    new = type(conv)(in_channels or conv.in_channels, out_channels or conv.out_channels, **kwargs)
    if conv.weight.is_contiguous(memory_format=_channels_last(conv.weight.ndim)):
        new.to(memory_format=_channels_last(conv.weight.ndim))  # type: ignore[call-overload]  # not in torch's stubs
    return new


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def register_adapter(class_path: str, adapter_module: str) -> None:
    """Plug networks of class ``class_path`` (``module.qualname``, subclasses too) with the adapter module
    ``adapter_module`` (imported on first use; it defines ``find_sites(model)`` and ``init_function(model)``)."""
    if _ADAPTERS.get(class_path, adapter_module) != adapter_module:
        raise ValueError(f"{class_path} already has the plug adapter {_ADAPTERS[class_path]}")
    _ADAPTERS[class_path] = adapter_module


def _find_adapter(model: nn.Module):
    for cls in type(model).__mro__:
        path = _ADAPTERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if path is not None:
            return importlib.import_module(path)
    raise ValueError(f"plug_fusion does not support {type(model).__name__}; supported networks: {SUPPORTED}")


def _select_levels(fusion: str, levels: Sequence[int] | None, available: list[int], network: str) -> tuple[int, ...]:
    if levels is None:  # the fusion's own default (TIF: the deepest skip only)
        return default_fusion_levels(fusion, available)
    if isinstance(levels, int | str | bytes) or not isinstance(levels, Sequence | set | frozenset):
        raise ValueError(f"levels must be a list of skip levels (0 = full resolution), e.g. [0, 1]; got {levels!r}")
    chosen = tuple(sorted(set(levels)))
    bad = [v for v in chosen if isinstance(v, bool) or not isinstance(v, int) or v not in available]
    if bad:
        raise ValueError(
            f"levels {list(levels)} invalid for this {network}: it has skip levels {sorted(available)} "
            "(0 = full resolution); pass a subset of those"
        )
    return chosen


def _rebuild_upsampler(model: nn.Module, site: Site, init: Callable[[nn.Module], None]) -> tuple[str, int]:
    """Make ``site.upsampler`` emit ``skip_width`` channels by rebuilding its last conv (as D-Net upsamples to the
    skip width); returns a description and the parameter change."""
    convs = [m for m in site.upsampler.modules() if isinstance(m, _CONVS)]
    last = convs[-1] if convs else None
    # A pixel-shuffle conv emits width·r channels that the shuffle folds back to width: keep the factor r.
    factor = last.out_channels // site.up_width if last is not None else 0
    if last is None or last.groups != 1 or factor * site.up_width != last.out_channels:
        raise ValueError(
            f"{site.name}: upsampled width {site.up_width} != skip width {site.skip_width} and its upsampler "
            f"({type(site.upsampler).__name__}) has no convolution emitting the upsampled width to rebuild; use a "
            f"deconv upsampler, widths with equal upsampled and skip channels, or levels without {site.level}"
        )
    new = conv_like(last, out_channels=factor * site.skip_width)
    init(new)
    replace_module(model, last, new)
    delta = count_parameters(new) - count_parameters(last)
    return f"{type(last).__name__} {last.out_channels}→{new.out_channels}", delta


def plug_fusion(
    model: nn.Module, fusion: str = "dff", levels: Sequence[int] | None = None, **fusion_kwargs
) -> nn.Module:
    """Replace the decoder skip concatenations of ``model`` by ``create_fusion(fusion, C, spatial_dims)``, in place.

    Args:
        model: an instance of a supported network (:data:`SUPPORTED`), 2D or 3D, built with any arguments
            (widths, norms, residual blocks, deep supervision).
        fusion: ``"dff"``, ``"tif"``, ``"add"`` or ``"concat"`` (the network unchanged); any name from
            :func:`fusionseg.fusion.list_fusions`.
        levels: skip levels to fuse (0 = the highest-resolution skip); the others keep their concatenation.
            None = every skip, except for ``"tif"`` (global attention, O(N²) in the voxels): the deepest only.
        fusion_kwargs: extra arguments of the fusion constructor (e.g. TIF heads).

    Returns:
        ``model`` itself, with ``model.fusion_plug`` (:class:`PlugRecord`) describing the change.

    Raises:
        ValueError: unsupported network, unknown fusion, bad levels, a network already plugged, or a skip
            whose widths cannot be fused (the message names the block, both widths and the fix).
    """
    key = str(fusion).lower()
    if key not in list_fusions():
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(list_fusions())}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"plug_fusion needs an nn.Module instance, got {type(model).__name__}; supported: {SUPPORTED}")
    adapter = _find_adapter(model)
    network = type(model).__name__
    plugged = getattr(model, "fusion_plug", None)
    if plugged is not None:
        raise ValueError(f"this {network} is already plugged ({plugged.fusion}); build a fresh instance")
    sites = adapter.find_sites(model)
    spatial_dims = sites[0].readers[0].weight.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"plug_fusion supports 2D and 3D networks; this {network} is {spatial_dims}D")
    chosen = _select_levels(key, levels, [s.level for s in sites], network)
    before = count_parameters(model)
    record = PlugRecord(network, key, chosen, len(sites), before, before)
    if key == "concat":  # the network's own concatenation: nothing to change
        model.fusion_plug = record  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module only
        return model
    init = adapter.init_function(model)
    for site in (s for s in sites if s.level in chosen):
        record.changes.append(_plug_site(model, site, key, spatial_dims, init, fusion_kwargs))
    record.params_after = count_parameters(model)
    model.fusion_plug = record  # type: ignore[assignment]
    return model


def _plug_site(model, site: Site, fusion: str, spatial_dims: int, init, fusion_kwargs: dict) -> SiteChange:
    width = site.skip_width
    rebuilt, up_delta = ("", 0)
    if site.up_width != width:
        rebuilt, up_delta = _rebuild_upsampler(model, site, init)
    reader_delta = 0
    for reader in site.readers:
        if reader.in_channels != site.up_width + site.skip_width:
            raise ValueError(
                f"{site.name}: expected a conv reading {site.up_width}+{site.skip_width} channels after the "
                f"concatenation, found {reader!r}; this network variant is not supported by plug_fusion"
            )
        new = conv_like(reader, in_channels=width)
        init(new)
        replace_module(model, reader, new)
        reader_delta += count_parameters(new) - count_parameters(reader)
    ref = site.readers[0].weight
    module = create_fusion(fusion, width, spatial_dims=spatial_dims, **fusion_kwargs).to(ref.device, ref.dtype)
    owner = site.owner
    if site.key is None:
        owner.fusion = module
    else:
        fusions = getattr(owner, "fusion", None)
        if not isinstance(fusions, nn.ModuleDict):
            fusions = owner.fusion = nn.ModuleDict()
        fusions[site.key] = module
    owner.__class__ = site.fused_class  # same object, same submodules; only forward differs
    return SiteChange(site.name, site.level, width, count_parameters(module), reader_delta, rebuilt, up_delta)
