"""Thin adapters that give fusionseg networks the deep-supervision switch nnU-Net v2 flips.

nnU-Net turns deep supervision on and off with ``network.decoder.deep_supervision = flag``
(``nnUNetTrainer.set_deep_supervision_enabled``). Our D-Net keeps the flag on the network itself
and DS-TransUNet has no ``decoder`` module. The adapter classes below subclass the networks without
touching their maths or their parameters: ``deep_supervision`` becomes a view of
``decoder.deep_supervision`` (D-Net's real decoder; for DS-TransUNet a parameter-free switch module
named ``decoder``), so ``state_dict`` keys are exactly those of ``create_model(name)``.

Outputs with deep supervision (what the trainers tell nnU-Net, full resolution first):

- D-Net: 5 logits at scales 1, 1/2, 1/4, 1/8, 1/16 (input sizes multiples of 32);
- DS-TransUNet: 3 logits ``(final, aux1, aux2)``, all at full resolution (multiples of 64).

Example:
    >>> net = build_fusionseg_network("dnet_small", in_channels=1, out_channels=3, spatial_dims=3)
    >>> net.decoder.deep_supervision = False        # what nnU-Net does for validation
    >>> net(torch.randn(1, 1, 32, 32, 32)).shape
    torch.Size([1, 3, 32, 32, 32])
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fusionseg.nets.dnet import DNet
from fusionseg.nets.ds_transunet import DSTransUNet
from fusionseg.nets.registry import create_model

__all__ = [
    "NETWORKS",
    "DNetForNnUNet",
    "DSTransUNetForNnUNet",
    "DeepSupervisionSwitch",
    "adapt_for_nnunet",
    "build_fusionseg_network",
    "deep_supervision_scales",
]


class DeepSupervisionSwitch(nn.Module):
    """Parameter-free stand-in for a ``decoder`` that only carries nnU-Net's ``deep_supervision`` flag."""

    def __init__(self, deep_supervision: bool) -> None:
        super().__init__()
        self.deep_supervision = bool(deep_supervision)

    def extra_repr(self) -> str:
        return f"deep_supervision={self.deep_supervision}"


class _DecoderSwitchMixin:
    """``deep_supervision`` read from / written to ``self.decoder.deep_supervision``.

    The wrapped constructors assign ``self.deep_supervision`` before any decoder exists; that first
    value is kept aside and moved onto the decoder by :meth:`_attach_switch`.
    """

    _modules: dict[str, Any]  # nn.Module's, from the network class this is mixed into
    decoder: Any  # the network's decoder, or a DeepSupervisionSwitch where it has none

    @property
    def deep_supervision(self) -> bool:
        return bool(self._modules["decoder"].deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        decoder = self._modules.get("decoder")
        if decoder is None:
            self.__dict__["_initial_deep_supervision"] = bool(value)
        else:
            decoder.deep_supervision = bool(value)

    def _attach_switch(self) -> None:
        flag = self.__dict__.pop("_initial_deep_supervision")
        if "decoder" not in self._modules:
            self.decoder = DeepSupervisionSwitch(flag)
        self._modules["decoder"].deep_supervision = flag


class DNetForNnUNet(_DecoderSwitchMixin, DNet):
    """:class:`~fusionseg.nets.dnet.DNet` whose deep supervision follows ``decoder.deep_supervision``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._attach_switch()


class DSTransUNetForNnUNet(_DecoderSwitchMixin, DSTransUNet):
    """:class:`~fusionseg.nets.ds_transunet.DSTransUNet` with a parameter-free ``decoder`` switch module."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._attach_switch()


_ADAPTERS: dict[type[nn.Module], type[nn.Module]] = {DNet: DNetForNnUNet, DSTransUNet: DSTransUNetForNnUNet}

# registry name -> deep-supervision scale of each output (full resolution first)
NETWORKS: dict[str, tuple[float, ...]] = {
    "dnet": (1.0, 0.5, 0.25, 0.125, 0.0625),
    "dnet_small": (1.0, 0.5, 0.25, 0.125, 0.0625),
    "ds_transunet": (1.0, 1.0, 1.0),
    "ds_transunet_small": (1.0, 1.0, 1.0),
}


def adapt_for_nnunet(net: nn.Module) -> nn.Module:
    """Turn a built D-Net / DS-TransUNet into its adapter in place (class swap: same parameters, same names)."""
    cls = _ADAPTERS.get(type(net))
    if cls is None:
        raise ValueError(
            f"no nnU-Net adapter for {type(net).__name__}; adapt one of {', '.join(c.__name__ for c in _ADAPTERS)}"
        )
    net.__dict__["_initial_deep_supervision"] = net.__dict__.pop("deep_supervision")
    net.__class__ = cls
    assert isinstance(net, _DecoderSwitchMixin)
    net._attach_switch()
    return net


def build_fusionseg_network(
    name: str, in_channels: int, out_channels: int, spatial_dims: int, deep_supervision: bool = True
) -> nn.Module:
    """``create_model(name, ...)`` adapted for nnU-Net (:func:`adapt_for_nnunet`).

    ``config`` keeps the registry entry, with ``deep_supervision=False``: that is how fusionseg
    rebuilds the network for prediction after ``fusionseg import-weights``.
    """
    if name not in NETWORKS:
        raise ValueError(f"no nnU-Net adapter for {name!r}; choose one of {', '.join(NETWORKS)}")
    kwargs = {"in_channels": in_channels, "out_channels": out_channels, "spatial_dims": spatial_dims}
    net = adapt_for_nnunet(create_model(name, **kwargs, deep_supervision=deep_supervision))
    net.config = {"name": name, "kwargs": {**kwargs, "deep_supervision": False}}  # type: ignore[assignment]
    return net


def deep_supervision_scales(name: str, spatial_dims: int) -> list[list[float]]:
    """nnU-Net's ``deep_supervision_scales`` for network ``name``: one per output, per axis, full resolution first."""
    return [[s] * spatial_dims for s in NETWORKS[name]]
