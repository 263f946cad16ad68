"""nnU-Net v2 integration, in one package: its networks, plug adapter, trainers, checkpoint import, prediction.

Importing this package is cheap and needs neither nnunetv2 nor dynamic-network-architectures; it
registers the nnU-Net parts with fusionseg's registries (the package facade :mod:`fusionseg` imports it,
so they are there wherever fusionseg is used):

- :mod:`.models` — ``nnunet_plain``, ``nnunet_resenc`` and ``nnunet_planned`` in the model registry;
- :mod:`.plug_adapter` — ``plug_fusion`` for nnU-Net's ``PlainConvUNet`` / ``ResidualEncoderUNet``;
- :mod:`.predict` — ``fusionseg predict`` for checkpoints whose preprocessing is of kind ``"nnunet"``;
- :mod:`.importer` — ``fusionseg import-weights`` (without ``--model``) for an nnU-Net ``checkpoint_final.pth``.

Its other modules need nnunetv2 (installed as ``docs/nnunet.md`` says):

- :mod:`.trainers` — ``nnUNetTrainerDNet``, ``nnUNetTrainerDNetSmall``, ``nnUNetTrainerDFF``,
  ``nnUNetTrainerTIF``, ``nnUNetTrainerDSTransUNet``, ``nnUNetTrainerDSTransUNetSmall``;
- :mod:`.adapters` — nnU-Net's ``decoder.deep_supervision`` switch for D-Net and DS-TransUNet;
- :mod:`.install` — ``fusionseg nnunet install | uninstall | list`` (makes the trainers visible to nnU-Net).

Example:
    >>> import fusionseg
    >>> "nnunet_plain" in fusionseg.list_models()
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fusionseg.checkpoints.importers import register_importer
from fusionseg.errors import InputError
from fusionseg.inference.predictors import register_predictor
from fusionseg.nnunet import models  # noqa: F401  (registers the nnU-Net models)
from fusionseg.nnunet.requirements import require_nnunetv2
from fusionseg.plug.core import register_adapter

if TYPE_CHECKING:
    from fusionseg.data.preprocessing import NnunetPreprocessing

__all__ = ["require_nnunetv2"]

for _name in ("PlainConvUNet", "ResidualEncoderUNet"):
    register_adapter(f"dynamic_network_architectures.architectures.unet.{_name}", "fusionseg.nnunet.plug_adapter")


def _predict_imported(nets: list, pres: list[NnunetPreprocessing], cases: list, output: Path, **options):
    """The predictor of checkpoints imported from nnU-Net (one model): :func:`.predict.predict_nnunet_files`."""
    if len(nets) > 1:
        raise InputError("ensembles of nnU-Net checkpoints are nnUNetv2_predict's job (-f 0 1 2 3 4); pass one")
    require_nnunetv2("predicting with an imported nnU-Net checkpoint")
    from fusionseg.nnunet.predict import predict_nnunet_files

    return predict_nnunet_files(nets[0], pres[0], cases, output, **options)


def _import_checkpoint(weights: Path, output: Path, strict: bool = True):
    """``fusionseg import-weights`` without ``--model``: :func:`.importer.import_nnunet_checkpoint`."""
    require_nnunetv2("import-weights without --model (an nnU-Net v2 checkpoint)")
    from fusionseg.nnunet.importer import import_nnunet_checkpoint

    return import_nnunet_checkpoint(weights, output, strict=strict)


register_predictor("nnunet", _predict_imported)
register_importer("nnunet", _import_checkpoint)
