"""nnU-Net v2 integration: trainers for fusionseg's networks, import of their checkpoints, nnU-Net-exact predict.

Needs nnunetv2 (installed as ``docs/nnunet.md`` says); importing :mod:`fusionseg` never does.
This package itself imports without it; its modules :mod:`.trainers`, :mod:`.networks` and
:mod:`.predict` need it.

- :mod:`.trainers` — ``nnUNetTrainerDNet``, ``nnUNetTrainerDNetSmall``, ``nnUNetTrainerDFF``,
  ``nnUNetTrainerTIF``, ``nnUNetTrainerDSTransUNet``, ``nnUNetTrainerDSTransUNetSmall``;
- :mod:`.adapters` — nnU-Net's ``decoder.deep_supervision`` switch for D-Net and DS-TransUNet;
- :mod:`.predict` — ``fusionseg predict`` for an imported ``checkpoint_final.pth`` (import:
  :mod:`fusionseg.engine.nnunet_import`);
- ``fusionseg nnunet install | uninstall | list`` (:mod:`fusionseg.cli.nnunet`) makes the trainers visible to nnU-Net.
"""

from __future__ import annotations

import importlib.util

from fusionseg.errors import InputError

__all__ = ["require_nnunetv2"]


def require_nnunetv2(what: str) -> None:
    """Raise :class:`InputError` saying ``what`` needs nnunetv2 when it is not installed."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise InputError(f"{what} needs nnunetv2; install it without touching torch as docs/nnunet.md says")
