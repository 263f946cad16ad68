"""Models from checkpoints: the typed preprocessing comes back, old checkpoints load, an ensemble shares settings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fusionseg.checkpoints.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from fusionseg.checkpoints.loading import check_same_preprocessing, load_model, load_models, shared_settings
from fusionseg.data import NnunetPreprocessing, Preprocessing
from fusionseg.data.normalization import ChannelNormalisation
from fusionseg.errors import InputError
from fusionseg.nets.registry import create_model

STORED = {"spatial_dims": 2, "in_channels": 1, "num_classes": 3, "patch_size": [16, 16], "version": 2}


def _checkpoint(path, pre: Preprocessing | dict):
    model = create_model("unet", in_channels=1, out_channels=3, spatial_dims=2, features=(4, 8))
    ckpt = build_checkpoint(model, preprocessing=pre if isinstance(pre, Preprocessing) else None, rng=False)
    if isinstance(pre, dict):  # written as an older fusionseg did
        ckpt["preprocessing"] = pre
    return save_checkpoint(path, ckpt)


def test_load_model_returns_the_typed_preprocessing_of_old_and_new_checkpoints(tmp_path):
    pre = Preprocessing.from_dict(STORED)
    _, loaded, ckpt = load_model(_checkpoint(tmp_path / "new.pt", pre))
    assert loaded == pre and ckpt["preprocessing"] == pre.to_dict()
    old = {k: v for k, v in pre.to_dict().items() if k not in ("foreground_fraction", "version", "out_channels")}
    _, loaded_old, _ = load_model(_checkpoint(tmp_path / "old.pt", old))
    assert loaded_old == pre  # the missing entries took today's values
    bad = _checkpoint(tmp_path / "bad.pt", {**pre.to_dict(), "patch_size": "abc"})
    with pytest.raises(InputError, match=r"bad\.pt: preprocessing\.patch_size is 'abc'.*the file was altered"):
        load_model(bad)
    assert load_checkpoint(bad)["preprocessing"]["patch_size"] == "abc"  # reading the raw file still works


@pytest.mark.parametrize(
    ("change", "differ"),
    [
        ({"patch_size": (32, 32)}, None),  # each model predicts with its own window
        ({"num_samples": 4}, None),
        ({"channel_normalisation": (ChannelNormalisation("noNorm"),)}, "channel_normalisation"),
        ({"target_spacing": (2.0, 2.0)}, "target_spacing"),
    ],
)
def test_an_ensemble_shares_all_but_the_training_settings(tmp_path, change, differ):
    pre = Preprocessing.from_dict(STORED)
    other = replace(pre, **change)
    assert shared_settings(other) == shared_settings(pre) or differ is not None
    paths = [_checkpoint(tmp_path / "a.pt", pre), _checkpoint(tmp_path / "b.pt", other)]
    if differ is None:
        models, pres = load_models(paths)
        assert len(models) == 2 and pres == [pre, other]
    else:
        with pytest.raises(InputError, match=rf"b\.pt: preprocessing differs from .*a\.pt \({differ}\)"):
            load_models(paths)


def test_an_nnunet_checkpoint_is_another_kind():
    nnunet = NnunetPreprocessing("nnUNetTrainer", "3d_fullres", {}, {}, None, 1, 3, 3, (64, 64, 64))
    assert shared_settings(nnunet) is nnunet
    with pytest.raises(InputError, match=r"b: preprocessing differs from a \(kind\)"):
        check_same_preprocessing([Preprocessing.from_dict({**STORED, "spatial_dims": 3, "patch_size": None}), nnunet],
                                 ["a", "b"])  # fmt: skip
