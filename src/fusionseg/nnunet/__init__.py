"""nnU-Net v2 integration: trainers for fusionseg's networks, import of their checkpoints, nnU-Net-exact predict.

Needs nnunetv2 (installed as ``docs/nnunet.md`` says); importing :mod:`fusionseg` never does.
This package itself imports without it; its modules :mod:`.trainers`, :mod:`.networks`,
:mod:`.importer` and :mod:`.predict` need it.

- :mod:`.trainers` — ``nnUNetTrainerDNet``, ``nnUNetTrainerDNetSmall``, ``nnUNetTrainerDFF``,
  ``nnUNetTrainerTIF``, ``nnUNetTrainerDSTransUNet``, ``nnUNetTrainerDSTransUNetSmall``;
- :mod:`.adapters` — nnU-Net's ``decoder.deep_supervision`` switch for D-Net and DS-TransUNet;
- :mod:`.cli` — ``fusionseg nnunet install | uninstall | list`` (make the trainers visible to nnU-Net);
- :mod:`.importer` / :mod:`.predict` — ``fusionseg import-weights`` / ``predict`` for ``checkpoint_final.pth``.
"""

from __future__ import annotations

import argparse
import importlib.util

from fusionseg.errors import InputError

__all__ = ["import_weights", "require_nnunetv2"]


def require_nnunetv2(what: str) -> None:
    """Raise :class:`InputError` saying ``what`` needs nnunetv2 when it is not installed."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise InputError(f"{what} needs nnunetv2; install it without touching torch as docs/nnunet.md says")


def import_weights(args: argparse.Namespace) -> int:
    """``fusionseg import-weights --weights checkpoint_final.pth --output CKPT`` (no ``--model``): nnU-Net v2."""
    require_nnunetv2("import-weights without --model (an nnU-Net v2 checkpoint)")
    from fusionseg.nnunet.importer import import_nnunet_checkpoint

    path, report, model = import_nnunet_checkpoint(args.weights, args.output, strict=not args.non_strict)
    print(report.summary())
    print(
        f"wrote {path} (model {model['name']}, nnU-Net preprocessing; predict with `fusionseg predict --model {path}`)"
    )
    return 0
