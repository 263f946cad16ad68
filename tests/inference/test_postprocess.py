"""Largest-connected-component postprocessing: the operation, its choice on validation, the JSON, the file step."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fusionseg.data.labels import LabelLayout
from fusionseg.errors import InputError
from fusionseg.inference.postprocess import (
    apply_postprocessing,
    determine_postprocessing,
    keep_largest_component,
    postprocess_label_file,
    read_postprocessing,
    write_postprocessing,
)


@pytest.mark.parametrize("dims", [2, 3])
def test_keep_largest_component(dims):
    shape = (12,) * dims
    label = np.zeros(shape, np.uint8)
    big, small, corner = (slice(1, 6),) * dims, (slice(8, 10),) * dims, (slice(6, 7),) * dims
    label[big] = 1
    label[small] = 1
    label[corner] = 1  # touches the big block at a corner only: connected (full connectivity)
    label[(slice(10, 12),) * dims] = 2
    out = keep_largest_component(label, [1])
    expected = label.copy()
    expected[small] = 0
    np.testing.assert_array_equal(out, expected)
    assert keep_largest_component(out, [1]) is out  # one component: unchanged, no copy
    # The region {1, 2}: the small block of 1s and the block of 2s touch at a corner; together still the smaller.
    expected[(slice(10, 12),) * dims] = 0
    np.testing.assert_array_equal(keep_largest_component(label, [1, 2]), expected)


def _write(folder, name, array):
    folder.mkdir(exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(folder / f"{name}.png")
    return folder / f"{name}.png"


def test_determine_postprocessing_keeps_what_helps_and_skips_what_hurts(tmp_path):
    """Class 1: predictions carry a spurious blob (removing it helps). Class 2: the ground truth has two
    components and so do the predictions (removing the smaller hurts)."""
    pairs = []
    for i in range(3):
        gt = np.zeros((20, 20), np.uint8)
        gt[2:8, 2:8] = 1
        gt[12:18, 2:8] = 2
        gt[12:15, 12:15] = 2
        pred = gt.copy()
        pred[10 + i, 15:17] = 1  # spurious class-1 blob
        pairs.append((f"c{i}", _write(tmp_path / "pred", f"c{i}", pred), _write(tmp_path / "gt", f"c{i}", gt)))
    layout = LabelLayout(names={0: "background", 1: "liver", 2: "cyst"})
    plan = determine_postprocessing(pairs, layout)
    assert [e["name"] for e in plan["keep_largest_component"]] == ["liver"]
    assert plan["keep_largest_component"][0]["values"] == [1]
    assert plan["dice_before"]["liver"] == pytest.approx(2 * 36 / (38 + 36))
    assert plan["dice_after"]["liver"] == 1.0 and plan["dice_after"]["cyst"] < plan["dice_before"]["cyst"] == 1.0
    assert plan["num_cases"] == 3
    path = write_postprocessing(plan, tmp_path / "postprocessing.json")
    assert read_postprocessing(path) == json.loads(path.read_text()) == plan
    cleaned = apply_postprocessing(np.asarray(Image.open(pairs[0][1])), plan)
    np.testing.assert_array_equal(cleaned, np.asarray(Image.open(pairs[0][2])))


def test_determine_postprocessing_for_regions_and_ignore(tmp_path):
    """Regions are judged by the mean Dice over all regions; a blob on ignore voxels does not count."""
    gt = np.zeros((16, 16), np.uint8)
    gt[2:10, 2:10] = 1
    gt[4:8, 4:8] = 2
    gt[12:, :] = 3  # ignore
    pred = gt.copy()
    pred[12:, :] = 0
    pred[13:15, 13:15] = 1  # a second "whole" component, but on unannotated voxels only
    pred[0, 14] = 2  # a spurious "core" voxel (also part of "whole")
    pairs = [("c", _write(tmp_path / "pred", "c", pred), _write(tmp_path / "gt", "c", gt))]
    layout = LabelLayout.from_dataset_json(
        {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, regions_class_order=[1, 2]
    )
    plan = determine_postprocessing(pairs, layout)
    assert plan["criterion"] == "mean Dice over regions"
    assert [e["name"] for e in plan["keep_largest_component"]] == ["whole", "core"]
    assert plan["dice_before"]["core"] == pytest.approx(2 * 16 / 33)
    assert plan["dice_after"]["core"] == 1.0  # mean over regions after fixing core: both exact
    np.testing.assert_array_equal(apply_postprocessing(pred, plan)[:12], gt[:12])


def test_postprocess_label_file_keeps_the_file_format(tmp_path):
    label = np.zeros((10, 10), np.uint8)
    label[1:5, 1:5] = 1
    label[8, 8] = 1
    path = _write(tmp_path, "p", label * 255)  # a binary mask stored as 0/255
    postprocess_label_file(path, {"keep_largest_component": [{"name": "fg", "values": [1]}]}, binary_as_255=True)
    written = np.asarray(Image.open(path))
    assert written[8, 8] == 0 and written[2, 2] == 255 and set(np.unique(written)) == {0, 255}


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "cannot read"), ('{"keep_largest_component": [{"values": ["a"]}]}', "keep_largest_component")],
)
def test_read_postprocessing_errors(content, message, tmp_path):
    path = tmp_path / "pp.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_postprocessing(path)
    with pytest.raises(InputError, match="does not exist"):
        read_postprocessing(tmp_path / "missing.json")
    with pytest.raises(InputError, match="no validation predictions"):
        determine_postprocessing([], LabelLayout(names={0: "bg", 1: "a"}))
