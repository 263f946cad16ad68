"""Slab-by-slab prediction equals the whole-volume path (blending, resampling, TTA, ensembles, regions)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from fusionseg.data import Preprocessing, build_preprocessing, make_phantom_dataset, scan_dataset
from fusionseg.errors import InputError
from fusionseg.inference.inputs import find_inputs
from fusionseg.inference.predict_files import predict_files
from fusionseg.inference.slab_inference import SlabPlan, blended_slabs, window_origins
from fusionseg.inference.slab_predict import slab_layout
from fusionseg.inference.sliding_window import predict_ensemble
from fusionseg.nets.registry import create_model
from fusionseg.runtime.memory_budget import default_memory_budget, format_bytes, parse_memory

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet(dims: int, out: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("unet", in_channels=1, out_channels=out, spatial_dims=dims, features=(4, 8)).eval()


def _pre(dims: int, patch: tuple[int, ...], classes: int = 3) -> Preprocessing:
    return Preprocessing.from_dict(
        {"spatial_dims": dims, "in_channels": 1, "num_classes": classes, "patch_size": patch}
    )


def test_window_origins_are_monai_windows():
    # 10 rows, window 4, overlap 0.5: starts 0, 2, 4, 6 (last one flush with the end)
    assert window_origins((10,), (4,), 0.5)[:, 0].tolist() == [0, 2, 4, 6]
    # flipped: MONAI's grid on the mirrored image (starts 0, 2, 4, 6, 7), mapped back
    assert sorted(window_origins((11,), (4,), 0.5, flip=(0,))[:, 0].tolist()) == [0, 1, 3, 5, 7]
    # smaller than the window: padded half before (MONAI), the window starts before the image
    assert window_origins((5,), (8,), 0.5)[:, 0].tolist() == [-1]


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("path", ["slabs", "whole volume"])
def test_the_amp_dtype_given_is_the_one_the_windows_run_in(amp_dtype, path, monkeypatch):
    """The dtype --amp resolved to reaches the autocast as it is: no second reading of the device rule
    (it would say float32 here: this CPU is made to report no native bf16)."""
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: False)
    model, pre, image = _unet(2, 3, 0), _pre(2, (16, 16)), torch.randn(1, 24, 20)
    dtypes = []
    model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    if path == "slabs":
        plan = SlabPlan.build([model], [pre], image.shape[1:], amp_dtype=amp_dtype)
        list(blended_slabs(plan, image, [(0, 24)]))
    else:
        predict_ensemble([model], [pre], image, amp_dtype=amp_dtype)
    assert dtypes and set(dtypes) == {amp_dtype or torch.float32}


@pytest.mark.parametrize(
    ("shape", "patches", "tta"),
    [
        ((45, 37), [(16, 16)], False),
        ((45, 37), [(16, 16), (20, 12)], True),  # ensemble with different windows, flips
        ((10, 37), [(16, 16)], True),  # smaller than the window along one axis (padding)
        ((20, 17, 23), [(8, 8, 8)], True),
    ],
)
def test_blended_slabs_equal_the_whole_volume(shape, patches, tta):
    dims = len(shape)
    models = [_unet(dims, 3, seed) for seed in range(len(patches))]
    pres = [_pre(dims, p) for p in patches]
    image = torch.randn(1, *shape)
    ref = predict_ensemble(models, pres, image, overlap=0.5, sw_batch_size=3, tta=tta)
    for axis in range(dims):
        plan = SlabPlan.build(models, pres, shape, overlap=0.5, tta=tta, sw_batch_size=3, axis=axis)
        size = shape[axis]
        ranges = [(max(0, lo - 1), min(size, lo + 4)) for lo in range(0, size, 4)]  # overlapping ranges
        out = torch.full_like(ref, float("nan"))
        ran = []
        plan.on_windows = ran.append
        for lo, hi, scores in blended_slabs(plan, image, ranges):
            index = [slice(None)] * (dims + 1)
            index[axis + 1] = slice(lo, hi)
            out[tuple(index)] = scores
        assert sum(ran) == plan.windows  # every window ran once
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


def test_blended_slabs_reject_decreasing_ranges():
    plan = SlabPlan.build([_unet(2, 2, 0)], [_pre(2, (8, 8), classes=2)], (16, 16), axis=0)
    with pytest.raises(ValueError, match="non-decreasing"):
        list(blended_slabs(plan, torch.randn(1, 16, 16), [(4, 8), (2, 6)]))


def _resampled_3d(tmp_path, regions: bool):
    """An oblique, anisotropic NIfTI (0.9 × 1.2 × 1.2 mm) predicted by a model planned at 1.5 mm isotropic."""
    from dataset_builders import OBLIQUE_3D, nnunet_dataset

    rng = np.random.default_rng(0)
    shape = (30, 26, 14)
    label = np.zeros(shape, np.uint8)
    label[5:22, 6:20, 2:11] = 1
    label[9:16, 9:15, 4:9] = 2
    image = (label * 1.5 + rng.normal(size=shape) * 0.3).astype(np.float32)
    labels = {"background": 0, "whole": [1, 2], "core": 2} if regions else {"background": 0, "a": 1, "b": 2}
    extra = {"regions_class_order": [1, 2]} if regions else {}
    root = nnunet_dataset(
        tmp_path / "ds", {"c0": [image]}, {"c0": label}, ".nii.gz", OBLIQUE_3D,
        channel_names={"0": "T1"}, labels=labels, **extra,
    )  # fmt: skip
    pre = build_preprocessing(scan_dataset(root), target_spacing=(1.5, 1.5, 1.5), patch_size=(16, 16, 8))
    return root / "imagesTr", pre


@pytest.mark.parametrize(
    ("case", "tta", "ensemble", "postprocess"),
    [
        ("3d", False, False, False),
        ("3d", True, True, True),
        ("3d-regions", True, False, False),
        ("2d", True, True, False),
    ],
)
def test_predict_files_slabs_match_the_whole_volume(case, tta, ensemble, postprocess, tmp_path):
    if case == "2d":
        root = make_phantom_dataset(tmp_path / "ph", spatial_dims=2, num_train=1, num_test=0, size=(48, 40))
        source, pre = root / "images", build_preprocessing(scan_dataset(root), patch_size=(16, 16))
    else:
        source, pre = _resampled_3d(tmp_path, regions=case == "3d-regions")
    models = [_unet(pre.spatial_dims, pre.out_channels, seed) for seed in range(2 if ensemble else 1)]
    plan = {"keep_largest_component": [{"name": "a", "values": [1]}]} if postprocess else None
    cases = find_inputs(source)
    options = dict(tta=tta, probabilities=case != "2d", postprocessing=plan, progress=False, overlap=0.5)
    _, failed = predict_files(models, pre, cases, tmp_path / "whole", whole_volume=True, **options)
    assert not failed
    for memory in (1, None):  # one row per slab (the minimum), and the default budget
        out = tmp_path / f"slabs-{memory}"
        _, failed = predict_files(models, pre, cases, out, memory=memory, **options)
        assert not failed
        for cid, _ in cases:
            if case == "2d":
                a = np.asarray(Image.open(tmp_path / "whole" / f"{cid}.png"))
                b = np.asarray(Image.open(out / f"{cid}.png"))
            else:
                a = np.asarray(nib.load(str(tmp_path / "whole" / f"{cid}.nii.gz")).dataobj)
                b = np.asarray(nib.load(str(out / f"{cid}.nii.gz")).dataobj)
                pa = np.asarray(nib.load(str(tmp_path / "whole" / f"{cid}_probabilities.nii.gz")).dataobj)
                pb = np.asarray(nib.load(str(out / f"{cid}_probabilities.nii.gz")).dataobj)
                np.testing.assert_allclose(pb, pa, atol=2e-5)
            assert a.shape == b.shape and len(np.unique(a)) > 1
            assert np.mean(a == b) >= 0.999
        assert not list(out.glob(".*tmp*"))  # the probabilities' scratch file is gone


def test_slab_layout_follows_the_budget(tmp_path):
    source, pre = _resampled_3d(tmp_path, regions=False)
    from fusionseg.data import load_for_inference

    image, meta = load_for_inference(find_inputs(source)[0][1], pre)
    plan = SlabPlan.build([_unet(3, 3, 0)], [pre], image.shape[1:])
    out_shape = tuple(meta["original_shape"])
    small, large = slab_layout(plan, meta, 1), slab_layout(plan, meta, 1 << 40)
    assert small.thickness == 1 and len(small.slabs) == out_shape[small.axis]
    assert large.thickness == out_shape[large.axis] and len(large.slabs) == 1
    middle = slab_layout(plan, meta, (small.estimate + large.estimate) // 2)
    assert 1 < middle.thickness < out_shape[middle.axis] and middle.estimate <= middle.budget
    rows = [s[2:] for s in middle.slabs]
    assert rows == sorted(rows) and rows[0][0] == 0 and rows[-1][1] == image.shape[1 + plan.axis]
    assert "memory budget" in middle.describe(out_shape)


def test_memory_budget_values():
    assert parse_memory("2G") == 2 << 30 and parse_memory("512MiB") == 512 << 20 and parse_memory("1.5g") == 3 << 29
    assert parse_memory(1000) == 1000
    for bad in ("", "-1G", "lots", "0"):
        with pytest.raises(InputError, match="--memory"):
            parse_memory(bad)
    assert 64 << 20 <= default_memory_budget() <= 1 << 30
    assert format_bytes(1536 << 20) == "1.5 GiB" and format_bytes(10) == "10 B"


@pytest.mark.parametrize("regions", [False, True])
def test_validation_scores_from_slabs_equal_the_whole_volume(regions):
    from fusionseg.data.labels import LabelLayout
    from fusionseg.evaluation.validation_dice import case_scores, probability_dice
    from fusionseg.inference.sliding_window import predict_volume

    labels = {"background": 0, "whole": [1, 2], "core": 2} if regions else {"background": 0, "a": 1, "b": 2}
    layout = LabelLayout.from_dataset_json(labels, [1, 2] if regions else None)
    pre = Preprocessing.from_dict(
        {"spatial_dims": 3, "in_channels": 1, "patch_size": [8, 8, 8], **layout.to_preprocessing()}
    )
    assert pre.activation == ("sigmoid" if regions else "softmax")
    model = _unet(3, 2 if regions else 3, 0)
    torch.manual_seed(1)
    items = [{"image": torch.randn(1, 19, 14, 11), "label": torch.randint(0, 3, (1, 19, 14, 11))}]
    probs = predict_volume(model, items[0]["image"], pre, overlap=0.25)
    expected = probability_dice(probs, items[0]["label"][0], layout)
    for memory in (1, None):
        scores = case_scores(model, items, pre, torch.device("cpu"), overlap=0.25, memory=memory)
        np.testing.assert_allclose(scores[0], expected, atol=1e-6)
    assert len(expected) == 2 and expected.std() > 0


def test_progress_bar_per_case_and_one_log_line_per_case(tmp_path, capsys, monkeypatch):
    from fusionseg.inference import slab_inference as infer  # where the bar of windows is made

    bars = []

    class Bar:
        def __init__(self, total, desc, enabled):
            self.total, self.desc, self.done, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n):
            self.done += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(infer, "progress_bar", lambda total, desc, enabled=True: Bar(total, desc, enabled))
    root = make_phantom_dataset(tmp_path / "ph", spatial_dims=2, num_train=2, num_test=0, size=(40, 32))
    pre = build_preprocessing(scan_dataset(root), patch_size=(16, 16))
    cases = find_inputs(root / "images")
    _, failed = predict_files(_unet(2, 3, 0), pre, cases, tmp_path / "out", tta=True, memory=1)
    assert not failed
    assert [b.desc for b in bars] == [cid for cid, _ in cases]
    assert all(b.closed and b.done == b.total == 3 * 12 for b in bars)  # 3 TTA passes × 4 × 3 windows (40 × 32)
    log = capsys.readouterr().out.splitlines()
    assert sum("→" in line and line.endswith(" s)") for line in log) == 2  # one line per case, with its time
    assert any("memory budget 1 B: 40 slab(s) of 1 of 40 rows" in line and "36 windows" in line for line in log)
    assert "cases/s" in log[-1] and "windows/s" in log[-1]


def test_predict_cli_memory_option(tmp_path, capsys):
    from fusionseg.checkpoints.checkpoint import build_checkpoint, save_checkpoint
    from fusionseg.cli import predict as predict_cli

    root = make_phantom_dataset(tmp_path / "ph", spatial_dims=2, num_train=1, num_test=0, size=(32, 32))
    pre = build_preprocessing(scan_dataset(root), patch_size=(16, 16))
    ckpt = save_checkpoint(tmp_path / "ck.pt", build_checkpoint(_unet(2, 3, 0), preprocessing=pre, rng=False))
    argv = ["--checkpoint", str(ckpt), "--input", str(root / "images"), "--output", str(tmp_path / "out")]
    assert predict_cli.main([*argv, "--memory", "1M", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "memory budget 1.0 MiB (--memory)" in out and "slab(s) of" in out
    with pytest.raises(InputError, match="--memory"):
        predict_cli.main([*argv, "--memory", "lots"])
