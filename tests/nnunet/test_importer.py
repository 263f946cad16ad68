"""``import-weights`` of an nnU-Net checkpoint: rebuilt under the right name, same outputs, nnU-Net preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (install it as docs/nnunet.md says)")

from fusionseg.checkpoints.checkpoint import load_checkpoint, rebuild_model
from fusionseg.data import NnunetPreprocessing, preprocessing_from_dict
from fusionseg.errors import InputError
from fusionseg.nnunet.importer import import_nnunet_checkpoint, is_nnunet_checkpoint
from fusionseg.nnunet.trainers import TRAINERS


def _nnunet_checkpoint(trainer) -> dict:
    """What nnUNetTrainer.save_checkpoint writes (numpy scalars in the logs included)."""
    return {
        "network_weights": trainer.network.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)]},
        "_best_ema": np.float64(0.5),
        "current_epoch": 3,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": type(trainer).__name__,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


@pytest.mark.parametrize(
    ("name", "stored_as", "kwargs"),
    [
        ("nnUNetTrainerDNetSmall", "dnet_small", {"in_channels": 1, "out_channels": 3, "spatial_dims": 3}),
        ("nnUNetTrainerDFF", "nnunet_planned", {"trainer": "nnUNetTrainerDFF", "configuration": "3d_fullres"}),
        ("nnUNetTrainer", "nnunet_planned", {"trainer": "nnUNetTrainer", "configuration": "3d_fullres"}),
    ],
)
def test_imported_network_reproduces_the_trained_one(nnunet_env, dataset_json, plans_factory, tmp_path, name,
                                                      stored_as, kwargs):  # fmt: skip
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cls = TRAINERS.get(name, nnUNetTrainer)  # nnU-Net's default trainer imports the same way
    trainer = cls(plans_factory(), "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    trainer.set_deep_supervision_enabled(False)
    torch.save(_nnunet_checkpoint(trainer), tmp_path / "checkpoint_final.pth")

    path, report, model = import_nnunet_checkpoint(tmp_path / "checkpoint_final.pth", tmp_path / "model.pt")
    assert report.ok and model["name"] == stored_as
    assert {k: model["kwargs"][k] for k in kwargs} == kwargs
    ckpt = load_checkpoint(path)
    pre = ckpt["preprocessing"]
    assert pre["kind"] == "nnunet" and pre["configuration"] == "3d_fullres" and pre["mirror_axes"] == [0, 1, 2]
    assert (pre["in_channels"], pre["num_classes"], pre["patch_size"]) == (1, 3, [32, 32, 32])
    assert pre["dataset_json"]["labels"] == dataset_json["labels"] and ckpt["epoch"] == 3
    typed = preprocessing_from_dict(pre)  # what predict reads
    assert isinstance(typed, NnunetPreprocessing) and typed.to_dict() == pre and typed.mirror_axes == (0, 1, 2)
    assert (typed.kind, typed.in_channels, typed.num_classes, typed.patch_size) == ("nnunet", 1, 3, (32, 32, 32))
    rebuilt = rebuild_model(ckpt)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trainer.network.eval()(x))


def test_only_nnunet_checkpoints_are_imported_this_way(tmp_path):
    assert not is_nnunet_checkpoint({"network_weights": {}, "trainer_name": "x"})
    with pytest.raises(InputError, match="is not an nnU-Net v2 checkpoint"):
        import_nnunet_checkpoint({"state_dict": {}}, tmp_path / "x.pt")
