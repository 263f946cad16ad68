"""nnU-Net trainers without a dataset: plans → network, deep-supervision targets and loss, one real train_step."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (install it as docs/nnunet.md says)")

from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

from fusionseg.errors import InputError
from fusionseg.fusion import DFF, TIF
from fusionseg.nnunet.trainers import TRAINERS

# trainer, configuration, expected patch, number of outputs with deep supervision, DS loss weights
CASES = [
    ("nnUNetTrainerDNetSmall", "3d_fullres", [32, 32, 32], 5, [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0]),
    ("nnUNetTrainerDNetSmall", "2d", [32, 32], 5, [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0]),
    ("nnUNetTrainerDFF", "3d_fullres", [32, 32, 32], 3, [2 / 3, 1 / 3, 0.0]),
    ("nnUNetTrainerTIF", "3d_fullres", [32, 32, 32], 3, [2 / 3, 1 / 3, 0.0]),
    ("nnUNetTrainerDFF", "2d", [32, 32], 3, [2 / 3, 1 / 3, 0.0]),
    ("nnUNetTrainerDSTransUNetSmall", "2d", [64, 64], 3, [0.6, 0.2, 0.2]),
]


def _trainer(name: str, configuration: str, dataset_json: dict, plans: dict):
    trainer = TRAINERS[name](plans, configuration, 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def _batch(trainer, batch_size: int = 2) -> dict:
    """A batch as nnU-Net's dataloader delivers it: data (B, C, *patch) and one target per deep-supervision output."""
    patch = trainer.configuration_manager.patch_size
    seg = torch.randint(0, 3, (batch_size, 1, *patch), dtype=torch.int16)
    ds = DownsampleSegForDSTransform(trainer._get_deep_supervision_scales())
    per_sample = [ds._apply_to_segmentation(s) for s in seg]
    target = [torch.stack([t[i] for t in per_sample]).float() for i in range(len(per_sample[0]))]
    return {"data": torch.randn(batch_size, 1, *patch), "target": target}


@pytest.mark.parametrize(("name", "configuration", "patch", "outputs", "weights"), CASES)
def test_trainer_trains_one_nnunet_step(
    nnunet_env, dataset_json, plans_factory, name, configuration, patch, outputs, weights
):
    trainer = _trainer(name, configuration, dataset_json, plans_factory())
    assert list(trainer.configuration_manager.patch_size) == patch
    assert len(trainer._get_deep_supervision_scales()) == outputs
    assert trainer.loss.weight_factors == pytest.approx(weights)
    batch = _batch(trainer)
    with torch.no_grad():
        out = trainer.network(batch["data"])
    assert [tuple(o.shape) for o in out] == [(2, 3, *t.shape[2:]) for t in batch["target"]]
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step(batch)["loss"]
    assert torch.isfinite(torch.as_tensor(loss))
    changed = sum(not torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))
    assert changed > 0.9 * len(before)  # SGD moved (nearly) every tensor; heads with weight 0 may stay
    trainer.set_deep_supervision_enabled(False)  # nnU-Net's validation / final prediction
    with torch.no_grad():
        single = trainer.network(batch["data"])
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, *patch)


@pytest.mark.parametrize(("name", "configuration", "patch", "outputs", "weights"), CASES)
def test_predictor_network_has_no_deep_supervision(
    dataset_json, plans_factory, name, configuration, patch, outputs, weights
):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = plans_factory(continue_training=None)
    cls = TRAINERS[name]
    if cls.patch_multiple > 1:  # the trainer saved its fitted patch in the model's plans.json
        plans["configurations"][configuration]["patch_size"] = patch
    pm = PlansManager(plans)
    net = cls.build_network_architecture(pm, pm.get_configuration(configuration), 1, 3, enable_deep_supervision=False)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, *patch)).shape == (1, 3, *patch)


def test_planned_unet_gets_dff_at_every_skip_and_tif_at_the_deepest(nnunet_env, dataset_json, plans_factory):
    dff = _trainer("nnUNetTrainerDFF", "3d_fullres", dataset_json, plans_factory()).network
    tif = _trainer("nnUNetTrainerTIF", "3d_fullres", dataset_json, plans_factory()).network
    assert sum(isinstance(m, DFF) for m in dff.modules()) == 3  # 4 stages → 3 skips
    tifs = [m for m in tif.modules() if isinstance(m, TIF)]
    assert len(tifs) == 1 and tifs[0].dim_l == 32  # deepest skip: features_per_stage[-2]
    assert not any(isinstance(m, TIF) for m in dff.modules()) and not any(isinstance(m, DFF) for m in tif.modules())


def test_patch_is_fitted_to_the_network_multiple_in_the_saved_plans(nnunet_env, dataset_json, plans_factory):
    plans = plans_factory(patch_3d=(48, 40, 96), patch_2d=(96, 160))
    original = copy.deepcopy(plans)
    dnet = _trainer("nnUNetTrainerDNetSmall", "3d_fullres", dataset_json, plans)
    assert dnet.configuration_manager.patch_size == [64, 32, 96]
    assert dnet.plans_manager.plans["configurations"]["3d_fullres"]["patch_size"] == [64, 32, 96]  # → plans.json
    assert dnet.my_init_kwargs["plans"]["configurations"]["3d_fullres"]["patch_size"] == [64, 32, 96]  # → checkpoint
    assert plans == original  # the caller's plans are not changed
    dstu = _trainer("nnUNetTrainerDSTransUNetSmall", "2d", dataset_json, plans_factory(patch_2d=(96, 160)))
    assert dstu.configuration_manager.patch_size == [128, 192]
    dff = _trainer("nnUNetTrainerDFF", "3d_fullres", dataset_json, plans_factory(patch_3d=(48, 40, 96)))
    assert dff.configuration_manager.patch_size == [48, 40, 96]  # nnU-Net's own U-Net takes the planned patch


def test_ds_transunet_refuses_3d_configurations(nnunet_env, dataset_json, plans_factory):
    with pytest.raises(InputError, match="trains 2D networks but configuration '3d_fullres' is 3D; use the 2d"):
        TRAINERS["nnUNetTrainerDSTransUNetSmall"](plans_factory(), "3d_fullres", 0, dataset_json, torch.device("cpu"))


def test_ds_transunet_uses_its_original_optimizer(nnunet_env, dataset_json, plans_factory):
    trainer = _trainer("nnUNetTrainerDSTransUNetSmall", "2d", dataset_json, plans_factory())
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (1e-3, 0.9, 1e-4, False)


def test_ds_transunet_trainer_loads_pretrained_encoders_from_the_environment(
    nnunet_env, dataset_json, plans_factory, monkeypatch, tmp_path
):
    from fusionseg.nets import create_model
    from fusionseg.nets.swin_pretrained import PRETRAINED_ENV

    encoder = create_model("ds_transunet_small", in_channels=1, out_channels=3, spatial_dims=2).encoder
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in encoder.state_dict().items()
             if not k.endswith(("relative_position_index", "attn_mask"))}  # fmt: skip
    torch.save({"model": state}, tmp_path / "swin.pth")
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path / "swin.pth"))
    trainer = _trainer("nnUNetTrainerDSTransUNetSmall", "2d", dataset_json, plans_factory())
    loaded = trainer.network.encoder.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(InputError, match=r"missing\.pth not found"):
        _trainer("nnUNetTrainerDSTransUNetSmall", "2d", dataset_json, plans_factory())
