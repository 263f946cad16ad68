"""nnU-Net's prediction slab by slab (fusionseg.nnunet.slabs) against nnU-Net's own predictor and export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (install it as docs/nnunet.md says)")

from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from fusionseg.nnunet.importer import nnunet_preprocessing
from fusionseg.nnunet.phantoms import make_plans
from fusionseg.nnunet.predict import make_predictor
from fusionseg.nnunet.slabs import Resampling, predict_labels
from fusionseg.nnunet.trainers import network_from_trainer

LABELS = {"background": 0, "class1": 1, "class2": 2}
REGIONS = {"background": 0, "whole": [1, 2], "core": [2]}


@pytest.mark.parametrize(
    "source, target, nearest_axis",
    [
        ((20, 17, 9), (13, 25, 9), None),  # down, up, equal
        ((9, 30, 28), (4, 21, 33), 0),  # separate low-resolution axis, nearest
        ((7, 6, 5), (7, 6, 5), None),  # nothing to do
        ((11, 12, 8), (11, 19, 23), 2),
    ],
)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_resampling_by_slabs_equals_nnunets(source, target, nearest_axis, axis):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, *source))
    theirs = resample_data_or_seg(logits, target, False, nearest_axis, 1, nearest_axis is not None, order_z=0)
    resampling = Resampling(source, target, nearest_axis)
    parts = []
    for lo in range(0, target[axis], 3):
        hi = min(lo + 3, target[axis])
        first, stop = resampling.source_rows(axis, lo, hi)
        rows = torch.from_numpy(logits).narrow(1 + axis, first, stop - first)
        parts.append(resampling.resample(rows, axis, lo, hi, first))
    ours = torch.cat(parts, 1 + axis).numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def _plans(spacing, order=1):
    plans = make_plans(patch_3d=(16, 24, 24), patch_2d=(24, 24), features=(4, 8, 16), spacing=spacing)
    for configuration in plans["configurations"].values():
        configuration["resampling_fn_probabilities_kwargs"]["order"] = order
    return plans


def test_resampling_follows_the_plans():
    case = {"spacing": [3.5, 0.9, 0.8], "shape_after_cropping_and_before_resampling": (14, 45, 50)}
    pm = PlansManager(_plans((1.0, 1.0, 1.0)))
    assert Resampling.from_plans(pm, pm.get_configuration("3d_fullres"), case, (49, 40, 40)).nearest_axis == 0
    assert Resampling.from_plans(pm, pm.get_configuration("3d_fullres"), case, (14, 45, 50)).source == (14, 45, 50)
    cubic = PlansManager(_plans((1.0, 1.0, 1.0), order=3))  # not reproduced slab by slab: nnU-Net's export runs
    assert Resampling.from_plans(cubic, cubic.get_configuration("3d_fullres"), case, (49, 40, 40)) is None


def _case(tmp_path, spacing, shape):
    import nibabel as nib

    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    image[5:25, 8:30, 2:9] += 3.0
    path = tmp_path / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(image, np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.mark.parametrize(
    "configuration, spacing, shape, tta, labels",
    [
        ("3d_fullres", (0.8, 0.9, 3.5), (50, 45, 14), False, LABELS),  # resampled, nearest along z
        ("3d_fullres", (1.2, 1.1, 1.3), (40, 36, 12), True, LABELS),  # linear on all axes, mirroring
        ("3d_fullres", (1.0, 1.0, 1.0), (20, 18, 10), False, REGIONS),  # smaller than the patch: padded
        ("2d", (0.8, 0.9, 3.5), (50, 45, 6), True, LABELS),  # slice by slice
    ],
)
def test_labels_by_slabs_equal_nnunets_predictor(tmp_path, monkeypatch, configuration, spacing, shape, tta, labels):
    torch.manual_seed(0)
    plans = _plans((1.0, 1.0, 1.0))
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 5, "file_ending": ".nii.gz"}
    if labels is REGIONS:
        dataset["regions_class_order"] = [1, 2]
    heads = 2 if labels is REGIONS else 3
    net = network_from_trainer("nnUNetTrainer", plans, configuration, 1, heads)
    with torch.no_grad():  # margins like a trained network's, so that nnU-Net's fp16 sums rarely flip a label
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d | torch.nn.Conv2d) and m.out_channels == heads:
                m.weight *= 5
    mirror_axes = [0, 1, 2] if configuration == "3d_fullres" else [0, 1]
    pre = nnunet_preprocessing(plans, configuration, copy.deepcopy(dataset), "nnUNetTrainer", mirror_axes)
    predictor = make_predictor(net, pre, tta=tta)
    pm, cm = predictor.plans_manager, predictor.configuration_manager
    data, _, props = cm.preprocessor_class(verbose=False).run_case(
        [str(_case(tmp_path, spacing, shape))], None, pm, cm, predictor.dataset_json
    )

    def nnunet_labels() -> np.ndarray:
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, pm, cm, predictor.label_manager, props
        )

    theirs = nnunet_labels()
    with monkeypatch.context() as patch:  # nnU-Net's sums in fp32 instead of fp16: the same maths, finer rounding
        patch.setattr(torch, "half", torch.float32)
        theirs_fp32 = nnunet_labels()
    resampling = Resampling.from_plans(pm, cm, props, data.shape[1:])
    whole = predict_labels(predictor, torch.from_numpy(data), props, resampling, budget=1 << 30)
    thin = predict_labels(predictor, torch.from_numpy(data), props, resampling, budget=1 << 19, sw_batch_size=3)
    assert whole.shape == theirs.shape == tuple(props["shape_before_cropping"])
    assert np.array_equal(thin, whole)  # slab thickness and batch size change nothing
    assert (whole == theirs_fp32).mean() >= 0.9999  # equal but for float ties
    assert (whole == theirs).mean() >= 0.998  # nnU-Net's fp16 sums flip as many labels against its fp32 ones
    assert len(np.unique(theirs)) > 1  # a real segmentation, not one class everywhere
