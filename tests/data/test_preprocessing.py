"""The typed preprocessing: today's stored dicts round-trip byte for byte, older dicts load with the defaults of
their time, bad entries are named, nnU-Net's kind is its own class, and the object is frozen."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fusionseg.data import make_phantom_dataset, scan_dataset
from fusionseg.data.labels import LabelLayout
from fusionseg.data.normalization import ChannelNormalisation
from fusionseg.data.plan import build_preprocessing
from fusionseg.data.preprocessing import (
    NnunetPreprocessing,
    Preprocessing,
    foreground_fraction,
    preprocessing_from_dict,
)
from fusionseg.errors import InputError

# The "preprocessing" of checkpoints written by `fusionseg train` before the settings were typed (2D phantoms,
# --patch-size 32,32), and of a 3D two-channel (CT + T2) region dataset with an ignore label.
PHANTOM_2D = json.loads(
    '{"version": 2, "layout": "folders", "spatial_dims": 2, "in_channels": 1, "labels": {"0": "background", '
    '"1": "class1", "2": "class2"}, "num_classes": 3, "out_channels": 3, "activation": "softmax", "regions": null, '
    '"region_names": null, "regions_class_order": null, "ignore_label": null, "channel_names": ["grey"], '
    '"modality": "2d", "normalisation": "zscore", "channel_normalisation": [{"scheme": "zscore", "use_mask": false}], '
    '"use_mask_for_norm": false, "median_relative_size_after_cropping": 1.0, "orientation": null, '
    '"target_spacing": [1.0, 1.0], "patch_size": [32, 32], "num_samples": 1, "foreground_fraction": 0.666667, '
    '"median_shape": [32.0, 32.0], "median_spacing": [1.0, 1.0], "binary_as_255": false}'
)
REGIONS_3D = json.loads(
    '{"version": 2, "layout": "nnunet", "spatial_dims": 3, "in_channels": 2, "labels": {"0": "background", '
    '"1": "label1", "2": "core"}, "num_classes": 3, "out_channels": 2, "activation": "sigmoid", '
    '"regions": [[1, 2], [2]], "region_names": ["whole", "core"], "regions_class_order": [1, 2], "ignore_label": 3, '
    '"channel_names": ["CT", "T2"], "modality": "CT", "normalisation": "ct", "channel_normalisation": [{"scheme": '
    '"ct", "clip": [-199.0, 298.32000000000005], "mean": 53.733705772811916, "std": 144.84476323801866}, '
    '{"scheme": "zscore", "use_mask": true}], "use_mask_for_norm": true, "median_relative_size_after_cropping": '
    '0.4375, "orientation": "RAS", "target_spacing": [0.800000011920929, 0.800000011920929, 2.5], "patch_size": '
    '[16, 16, 8], "num_samples": 1, "foreground_fraction": 0.666667, "median_shape": [24.0, 20.0, 8.0], '
    '"median_spacing": [0.800000011920929, 0.800000011920929, 2.5], "binary_as_255": false}'
)
RELABELLED = {**REGIONS_3D, "original_labels": [0, 4, 7]}
# The oldest format (version 1): no regions, ignore label, normalisation mask or patch-centre rule.
VERSION_1 = {
    "version": 1, "layout": "nnunet", "spatial_dims": 3, "in_channels": 1, "num_classes": 2,
    "labels": {"0": "background", "1": "liver"}, "channel_names": ["CT"], "modality": "CT", "normalisation": "ct",
    "channel_normalisation": [{"scheme": "ct", "clip": [-100.0, 200.0], "mean": 60.0, "std": 40.0}],
    "orientation": "RAS", "target_spacing": [1.0, 1.0, 2.5], "patch_size": [96, 96, 48], "num_samples": 2,
    "median_shape": [256.0, 256.0, 90.0], "median_spacing": [0.8, 0.8, 2.5], "binary_as_255": False,
}  # fmt: skip
NNUNET = {
    "kind": "nnunet", "trainer": "nnUNetTrainerDFF", "configuration": "3d_fullres",
    "plans": {"plans_name": "nnUNetPlans", "configurations": {}}, "dataset_json": {"labels": {"background": 0}},
    "mirror_axes": [0, 1, 2], "in_channels": 1, "num_classes": 3, "spatial_dims": 3, "patch_size": [64, 64, 64],
}  # fmt: skip


@pytest.mark.parametrize("stored", [PHANTOM_2D, REGIONS_3D, RELABELLED], ids=["2d", "3d-regions", "relabelled"])
def test_todays_dicts_round_trip_byte_for_byte(stored):
    pre = Preprocessing.from_dict(stored)
    assert json.dumps(pre.to_dict()) == json.dumps(stored)  # same entries, values and order: same checkpoint bytes
    assert preprocessing_from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert pre.kind == "fusionseg" and pre.spatial_dims == stored["spatial_dims"]


def test_the_typed_settings_read_what_the_dict_held():
    pre = Preprocessing.from_dict(RELABELLED)
    assert (pre.in_channels, pre.num_classes, pre.out_channels, pre.activation) == (2, 3, 2, "sigmoid")
    assert pre.label_layout.regions == ((1, 2), (2,)) and pre.label_layout.ignore_label == 3
    assert pre.channel_normalisation[0] == ChannelNormalisation("ct", (-199.0, 298.32000000000005),
                                                                53.733705772811916, 144.84476323801866)  # fmt: skip
    assert pre.channel_normalisation[1] == ChannelNormalisation("zscore", use_mask=True)
    assert pre.normalisation == "ct" and pre.patch_size == (16, 16, 8) and pre.target_spacing[2] == 2.5
    assert pre.original_labels == (0, 4, 7) and pre.dataset_layout == "nnunet"


def test_plan_of_the_phantoms_is_the_dict_of_before(tmp_path):
    """Parity with the plain-dict code: the same dataset planned now gives the checkpoint entry written then."""
    root = make_phantom_dataset(tmp_path / "ph2d", spatial_dims=2, num_train=4, num_test=1, size=(32, 32), seed=0)
    pre = build_preprocessing(scan_dataset(root), patch_size=(32, 32))
    assert json.dumps(pre.to_dict()) == json.dumps(PHANTOM_2D)


@pytest.mark.parametrize(
    ("removed", "expected"),
    [
        ("foreground_fraction", {"foreground_fraction": foreground_fraction(3)}),  # the rule of today
        ("original_labels", {"original_labels": None}),
        ("version", {"version": 2}),
        ("use_mask_for_norm", {"use_mask_for_norm": False}),
        ("num_samples", {"num_samples": 1}),
        ("patch_size", {"patch_size": None}),  # the whole image is the window
    ],
)
def test_older_dicts_without_recent_entries_load_with_todays_defaults(removed, expected):
    stored = {k: v for k, v in RELABELLED.items() if k != removed}
    assert Preprocessing.from_dict(stored) == dataclasses.replace(Preprocessing.from_dict(RELABELLED), **expected)


def test_version_1_checkpoint_loads_as_plain_classes():
    pre = Preprocessing.from_dict(VERSION_1)
    assert pre.version == 1 and pre.label_layout == LabelLayout(names={0: "background", 1: "liver"})
    assert (pre.out_channels, pre.activation, pre.use_mask_for_norm) == (2, "softmax", False)
    assert pre.foreground_fraction == 0.5 and pre.median_relative_size_after_cropping is None
    assert pre.num_samples == 2 and pre.patch_size == (96, 96, 48)
    stored = pre.to_dict()  # written again: today's entries, its own version
    assert stored["version"] == 1 and stored["regions"] is None and stored["out_channels"] == 2
    assert Preprocessing.from_dict(stored) == pre


def test_a_hand_written_dict_needs_dims_channels_and_classes():
    pre = Preprocessing.from_dict({"spatial_dims": 2, "in_channels": 2, "num_classes": 3, "patch_size": [8, 12]})
    assert pre.channel_normalisation == (ChannelNormalisation("zscore"),) * 2  # nnU-Net's default scheme
    assert pre.label_layout.names == {0: "background", 1: "class1", 2: "class2"} and pre.orientation is None
    assert pre.target_spacing is None and pre.foreground_fraction == foreground_fraction(3)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"patch_size": "abc"}, r"preprocessing\.patch_size is 'abc', expected positive integers like \[96, 96\]"),
        ({"patch_size": [16, 16]}, r"patch_size \[16, 16\] needs 3 values"),
        ({"spatial_dims": 4}, r"preprocessing\.spatial_dims is 4, expected 2 or 3"),
        ({"in_channels": 0}, r"preprocessing\.in_channels is 0, expected a positive integer"),
        ({"in_channels": 3}, r"2 channel normalisations for in_channels=3"),
        ({"num_classes": 5}, r"preprocessing\.num_classes is 5, expected the 3 entries of labels"),
        ({"out_channels": 3}, r"preprocessing\.out_channels is 3, expected 2 \(what the labels"),
        ({"activation": "softmax"}, r"preprocessing\.activation is 'softmax', expected 'sigmoid'"),
        ({"normalisation": "zscore"}, r"preprocessing\.normalisation is 'zscore', expected 'ct'"),
        ({"target_spacing": [1.0, -1.0, 2.0]}, r"target_spacing is \[1\.0, -1\.0, 2\.0\], expected positive"),
        ({"regions_class_order": [1]}, r"regions_class_order is \[1\], expected 2 label values"),
        ({"channel_normalisation": [{"scheme": "ct"}, {"scheme": "zscore"}]}, r'clip, mean and std for a "ct"'),
        ({"use_mask_for_norm": "yes"}, r"use_mask_for_norm is 'yes', expected true or false"),
        ({"patch-size": [8, 8, 8]}, r"unknown entries patch-size \(a newer fusionseg's, or a typo\)"),
        ({"kind": "monai"}, r"preprocessing\.kind is 'monai', expected \"nnunet\" or no kind"),
    ],
)
def test_bad_entries_are_named(change, match):
    with pytest.raises(InputError, match=match):
        preprocessing_from_dict({**REGIONS_3D, **change})


@pytest.mark.parametrize("missing", ["spatial_dims", "in_channels"])
def test_missing_required_entries_are_named(missing):
    with pytest.raises(InputError, match=rf"preprocessing\.{missing} is missing"):
        Preprocessing.from_dict({k: v for k, v in PHANTOM_2D.items() if k != missing})
    with pytest.raises(InputError, match=r"preprocessing\.num_classes is missing \(and there are no labels\)"):
        Preprocessing.from_dict({"spatial_dims": 2, "in_channels": 1})
    with pytest.raises(InputError, match=r"preprocessing is \[1, 2\], expected a mapping"):
        preprocessing_from_dict([1, 2])


def test_nnunet_preprocessing_is_its_own_kind():
    pre = preprocessing_from_dict(NNUNET)
    assert isinstance(pre, NnunetPreprocessing) and pre.kind == "nnunet"
    assert (pre.in_channels, pre.num_classes, pre.spatial_dims, pre.patch_size) == (1, 3, 3, (64, 64, 64))
    assert pre.mirror_axes == (0, 1, 2) and pre.plans == NNUNET["plans"]
    assert json.dumps(pre.to_dict()) == json.dumps(NNUNET)
    with pytest.raises(InputError, match=r'kind "nnunet" has missing or unknown entries plans'):
        preprocessing_from_dict({k: v for k, v in NNUNET.items() if k != "plans"})
    with pytest.raises(InputError, match=r"preprocessing\.mirror_axes is 'xyz', expected axis numbers"):
        preprocessing_from_dict({**NNUNET, "mirror_axes": "xyz"})


def test_frozen_and_changed_by_replace():
    pre = Preprocessing.from_dict(PHANTOM_2D)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.patch_size = (64, 64)  # type: ignore[misc]
    wider = dataclasses.replace(pre, patch_size=(64, 64))
    assert wider.to_dict()["patch_size"] == [64, 64] and pre.patch_size == (32, 32)
    with pytest.raises(ValueError, match=r"patch_size \[64\] needs 2 values"):
        dataclasses.replace(pre, patch_size=(64,))
    with pytest.raises(ValueError, match="foreground_fraction must lie in"):
        dataclasses.replace(pre, foreground_fraction=1.5)
