"""layers.py: LayerNormChannels, DropPath, layout helpers and the 2D/3D factories."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.layers import (
    DropPath,
    LayerNormChannels,
    batch_norm_type,
    channels_last_format,
    check_spatial_dims,
    conv_transpose_type,
    conv_type,
    is_channels_last,
    max_pool_type,
    spatial_mean,
    to_channels_last,
)


@pytest.mark.parametrize("channels_last", [False, True], ids=["ncs", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 4, 3, 5, 6), (3, 5, 9)])
def test_layer_norm_channels_matches_layer_norm_on_permuted_tensor(shape, channels_last):
    norm = LayerNormChannels(shape[1], eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(shape) * 3 + 1
    if channels_last:
        x = to_channels_last(x)
    expected = F.layer_norm(x.movedim(1, -1), (shape[1],), norm.weight, norm.bias, 1e-6).movedim(-1, 1)
    out = norm(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if len(shape) > 3:  # channels-last stays channels-last (NC* input also comes back channels-last)
        assert is_channels_last(out)


def test_layer_norm_channels_backward_and_errors():
    norm = LayerNormChannels(4)
    x = to_channels_last(torch.randn(2, 4, 3, 3)).requires_grad_()
    norm(x).pow(2).sum().backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    assert norm.weight.grad is not None and norm.bias.grad is not None
    with pytest.raises(ValueError, match=r"expects 4 channels at dim 1, got input of shape \(2, 3, 3, 3\)"):
        norm(torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="num_channels must be >= 1"):
        LayerNormChannels(0)
    plain = LayerNormChannels(4, elementwise_affine=False)
    assert plain.weight is None and not list(plain.parameters())
    out = plain(torch.randn(2, 4, 5, 5))
    torch.testing.assert_close(out.mean(1), torch.zeros(2, 5, 5), atol=1e-5, rtol=0)


def test_drop_path_eval_and_zero_probability_are_identity():
    x = torch.randn(8, 3, 4, 4)
    assert DropPath(0.5).eval()(x) is x
    assert DropPath(0.0).train()(x) is x


def test_drop_path_training_statistics():
    torch.manual_seed(1)
    p = 0.3
    x = torch.ones(20_000, 2, 3)
    out = DropPath(p).train()(x)
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / (1 - p)).all(1)).all()  # whole samples kept or dropped
    dropped = (per_sample[:, 0] == 0).float().mean().item()
    assert abs(dropped - p) < 0.02
    assert abs(out.mean().item() - 1.0) < 0.03  # unbiased in expectation


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_drop_path_bad_probability(p):
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\)"):
        DropPath(p)


@pytest.mark.parametrize(
    ("spatial_dims", "conv", "conv_t", "bn", "pool", "fmt"),
    [
        (2, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.MaxPool2d, torch.channels_last),
        (3, nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.MaxPool3d, torch.channels_last_3d),
    ],
)
def test_factories(spatial_dims, conv, conv_t, bn, pool, fmt):
    assert conv_type(spatial_dims) is conv
    assert conv_transpose_type(spatial_dims) is conv_t
    assert batch_norm_type(spatial_dims) is bn
    assert max_pool_type(spatial_dims) is pool
    assert channels_last_format(spatial_dims + 2) == fmt
    assert check_spatial_dims(spatial_dims) == spatial_dims
    assert conv_type(1) is nn.Conv1d and channels_last_format(3) == torch.contiguous_format


@pytest.mark.parametrize("bad", [0, 1, 4, True, "2", None])
def test_bad_spatial_dims(bad):
    with pytest.raises(ValueError, match=r"spatial_dims must be one of \(2, 3\)"):
        check_spatial_dims(bad)
    if bad not in (1,):
        with pytest.raises(ValueError, match="spatial_dims must be one of"):
            conv_type(bad)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 3, 2, 4, 5)])
def test_layout_helpers(shape):
    x = torch.randn(shape)
    assert not is_channels_last(x)
    y = to_channels_last(x)
    assert is_channels_last(y) and torch.equal(x, y)
    assert to_channels_last(y).data_ptr() == y.data_ptr()  # no copy when already channels-last
    assert x.movedim(1, -1).contiguous().movedim(-1, 1).stride() == y.stride()
    torch.testing.assert_close(spatial_mean(y), x.flatten(2).mean(-1), atol=1e-6, rtol=1e-6)
    assert not is_channels_last(torch.randn(3, 4))
