"""Per-channel normalisation schemes against plain NumPy formulas; nnU-Net's non-zero-mask rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fusionseg.data.normalization import (
    ChannelNormalisation,
    nonzero_mask,
    normalise,
    relative_size_after_cropping,
    scheme_for_channel,
    use_mask_for_norm,
)
from fusionseg.errors import InputError


@pytest.mark.parametrize(
    ("name", "scheme"),
    [
        ("CT", "ct"),
        ("ct", "ct"),
        ("noNorm", "noNorm"),
        ("rescale_to_0_1", "rescale_to_0_1"),
        ("rescale_0_1", "rescale_to_0_1"),  # nnU-Net's own spelling
        ("rgb_to_0_1", "rgb_to_0_1"),
        ("zscore", "zscore"),
        ("T1", "zscore"),
        ("FLAIR", "zscore"),
        ("R", "zscore"),
        ("CT_arterial", "zscore"),  # as nnU-Net: only "CT" itself gets CT normalisation
    ],
)
def test_scheme_for_channel(name, scheme):
    assert scheme_for_channel(name) == scheme


def _brain_like(rng: np.random.Generator) -> np.ndarray:
    """Two channels: a non-zero ellipsoid with a zero-valued hole inside, zero around it."""
    grid = np.mgrid[:16, :14, :10].astype(np.float64)
    inside = ((grid[0] - 8) / 6) ** 2 + ((grid[1] - 7) / 5) ** 2 + ((grid[2] - 5) / 4) ** 2 < 1
    image = np.where(inside, rng.normal(300, 40, (2, 16, 14, 10)), 0.0)
    image[:, 8, 7, 5] = 0.0  # an enclosed zero voxel: the filled mask still includes it
    return image.astype(np.float32)


def test_normalise_matches_numpy_formulas():
    rng = np.random.default_rng(0)
    brain = _brain_like(rng)
    head = brain[0] != 0  # every channel is zero around the "head", as in skull-stripped data
    ct = (rng.normal(0, 400, (16, 14, 10)) * head).astype(np.float32)
    rgb = (rng.integers(0, 256, (16, 14, 10)) * head).astype(np.float32)
    image = np.stack([ct, brain[0], brain[1], (brain[1] * 3 - 7) * head, rgb, brain[0]])
    specs = [
        ChannelNormalisation("ct", clip=(-300.0, 500.0), mean=40.0, std=250.0),
        ChannelNormalisation("zscore", use_mask=True),
        ChannelNormalisation("zscore", use_mask=False),
        ChannelNormalisation("rescale_to_0_1"),
        ChannelNormalisation("rgb_to_0_1"),
        ChannelNormalisation("noNorm"),
    ]
    out = normalise(torch.from_numpy(image), specs).numpy()
    mask = ndimage.binary_fill_holes(np.any(image != 0, axis=0))
    assert mask[8, 7, 5] and mask.sum() < mask.size / 2
    np.testing.assert_allclose(out[0], (np.clip(ct, -300, 500) - 40) / 250, rtol=1e-5, atol=1e-5)
    inside = image[1][mask].astype(np.float64)
    expected = np.where(mask, (image[1] - inside.mean()) / inside.std(), image[1])
    np.testing.assert_allclose(out[1], expected, rtol=1e-4, atol=1e-4)
    assert np.all(out[1][~mask] == 0)  # outside the mask stays 0
    whole = image[2].astype(np.float64)
    np.testing.assert_allclose(out[2], (whole - whole.mean()) / whole.std(), rtol=1e-4, atol=1e-4)
    shifted = image[3].astype(np.float64)
    np.testing.assert_allclose(out[3], (shifted - shifted.min()) / (shifted.max() - shifted.min()), atol=1e-6)
    np.testing.assert_allclose(out[4], rgb / 255, rtol=1e-6)
    np.testing.assert_array_equal(out[5], image[5])
    np.testing.assert_array_equal(image[0], ct)  # input untouched


def test_mask_comes_from_all_channels_before_normalising():
    image = np.zeros((2, 6, 6), np.float32)
    image[0, 1:3, 1:3] = 5.0
    image[1, 3:5, 3:5] = [[1.0, 2.0], [3.0, 4.0]]  # non-zero where channel 0 is zero
    out = normalise(torch.from_numpy(image), [ChannelNormalisation("zscore", use_mask=True)] * 2).numpy()
    mask = np.any(image != 0, axis=0)
    values = image[1][mask].astype(np.float64)
    np.testing.assert_allclose(out[1][mask], (values - values.mean()) / values.std(), rtol=1e-5)


def test_older_channel_scheme_is_a_plain_zscore():
    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    out = normalise(x, [ChannelNormalisation("channel")])
    torch.testing.assert_close(out, (x - x.mean()) / x.std(unbiased=False))


def test_relative_size_and_mask_rule():
    image = np.zeros((1, 10, 10, 10))
    image[0, 2:6, 1:9, 0:10] = 1.0  # box 4 × 8 × 10 = 320 of 1000 voxels
    assert relative_size_after_cropping(image) == pytest.approx(0.32)
    assert relative_size_after_cropping(np.zeros((1, 4, 4))) == 1.0
    assert relative_size_after_cropping(np.ones((2, 4, 4))) == 1.0
    assert use_mask_for_norm([0.5, 0.9, 0.7]) is True  # median 0.7 < 3/4
    assert use_mask_for_norm([0.8, 0.9, 0.7]) is False  # median 0.8
    assert use_mask_for_norm([0.9], forced=True) is True and use_mask_for_norm([]) is False
    assert nonzero_mask(image).sum() == 320


def test_rgb_scheme_rejects_values_outside_0_255():
    with pytest.raises(InputError, match=r"channel 0 holds values -3\.\.10, outside 0\.\.255 of \"rgb_to_0_1\""):
        normalise(torch.tensor([[[-3.0, 10.0]]]), [ChannelNormalisation("rgb_to_0_1")])
    with pytest.raises(InputError, match="image has 1 channels but the preprocessing expects 2"):
        normalise(torch.zeros(1, 2, 2), [ChannelNormalisation("noNorm")] * 2)
    with pytest.raises(ValueError, match='"ct" without its statistics'):
        normalise(torch.zeros(1, 2, 2), [ChannelNormalisation("ct")])


@pytest.mark.parametrize(
    "stored",
    [
        {"scheme": "ct", "clip": [-300.0, 500.0], "mean": 40.0, "std": 250.0},
        {"scheme": "zscore", "use_mask": True},
        {"scheme": "zscore"},  # version 1: no use_mask
        {"scheme": "channel"},  # the oldest checkpoints
        {"scheme": "rgb_to_0_1"},
    ],
)
def test_channel_normalisation_dict_round_trip(stored):
    spec = ChannelNormalisation.from_dict(stored)
    assert spec.to_dict() == stored and list(spec.to_dict()) == list(stored)  # same entries, same order


@pytest.mark.parametrize(
    ("stored", "match"),
    [
        ({"scheme": "median"}, r"channel_normalisation is \{'scheme': 'median'\}, expected a mapping with a scheme"),
        ({"scheme": "ct", "clip": [0.0, 1.0]}, 'clip, mean and std for a "ct" channel'),
        ({"scheme": "ct", "clip": "0,1", "mean": 0, "std": 1}, r"channel_normalisation\.clip is '0,1', expected two"),
        ({"scheme": "zscore", "use_mask": "yes"}, r"\.use_mask is 'yes', expected true or false"),
        ({"scheme": "zscore", "mask": True}, r"expected only scheme, clip, mean, std and use_mask \(not mask\)"),
        (["zscore"], "expected a mapping"),
    ],
)
def test_channel_normalisation_bad_dicts_name_the_entry(stored, match):
    with pytest.raises(InputError, match=match):
        ChannelNormalisation.from_dict(stored)
    with pytest.raises(ValueError, match="scheme 'median' is none of ct, zscore"):
        ChannelNormalisation("median")
