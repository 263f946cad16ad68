"""Convolution kernels: each equals the builtin module it replaces (forward and gradients), channels-last out."""

from __future__ import annotations

import pytest
import torch

from fusionseg.kernels.conv import (
    bn_affine,
    conv_bn_channels_last,
    conv_channels_last,
    conv_few_channels,
    depthwise,
    pointwise,
    upsample2x,
)
from fusionseg.layers import batch_norm_type, conv_type, is_channels_last, to_channels_last

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pointwise_is_a_1x1_conv_and_channels_last():
    conv = torch.nn.Conv3d(5, 7, 1)
    x = torch.randn(2, 5, 3, 4, 6)
    y = pointwise(to_channels_last(x), conv)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("kernel,dilation,groups", [(3, 1, 5), (7, 3, 5), (7, 1, 1)])
def test_same_conv_fast_backward_equals_builtin(kernel, dilation, groups):
    pad = dilation * (kernel - 1) // 2
    conv = torch.nn.Conv3d(5, 5, kernel, padding=pad, dilation=dilation, groups=groups)
    x = torch.randn(2, 5, 7, 6, 5, requires_grad=True)
    grad = torch.randn(2, 5, 7, 6, 5)
    y = depthwise(to_channels_last(x), conv)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-6)
    fast = torch.autograd.grad(y, [x, conv.weight, conv.bias], grad)
    ref = torch.autograd.grad(conv(x), [x, conv.weight, conv.bias], grad)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "c_in,kernel,stride,padding,size",
    [(1, 3, 1, 1, (6, 5, 7)), (1, 7, 2, 3, (8, 6, 5)), (2, 5, 2, 2, (7, 6, 9)), (4, 3, 2, 1, (7, 9))],
)
def test_conv_few_channels_equals_builtin_conv(c_in, kernel, stride, padding, size):
    torch.manual_seed(0)
    conv = (torch.nn.Conv3d if len(size) == 3 else torch.nn.Conv2d)(c_in, 5, kernel, stride, padding)
    x = torch.randn(2, c_in, *size)
    with torch.no_grad():
        y = conv_few_channels(conv, x, conv.weight, conv.bias)
        ref = conv(x)
    assert y.shape == ref.shape and y.movedim(1, -1).is_contiguous()
    assert torch.allclose(y, ref, atol=1e-5)
    assert conv_few_channels(conv, x, conv.weight, conv.bias) is None  # training: the builtin (less memory)
    wide = torch.nn.Conv2d(8, 5, 3, padding=1)  # many input channels: the builtin (oneDNN) is better
    with torch.no_grad():
        assert conv_few_channels(wide, torch.randn(1, 8, 5, 5), wide.weight, wide.bias) is None


@pytest.mark.parametrize("size", [(3, 5), (3, 2, 4)])
def test_upsample2x_equals_transposed_conv(size):
    conv_t = (torch.nn.ConvTranspose2d if len(size) == 2 else torch.nn.ConvTranspose3d)(6, 4, 2, stride=2)
    x = torch.randn(2, 6, *size, requires_grad=True)
    y = upsample2x(to_channels_last(x), conv_t)
    ref = conv_t(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    assert y.shape == (2, 4, *(2 * s for s in size)) and y.movedim(1, -1).is_contiguous()
    grad = torch.randn_like(ref)
    g_fast = torch.autograd.grad(y, [x, conv_t.weight], grad)
    g_ref = torch.autograd.grad(ref, [x, conv_t.weight], grad)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_pointwise_adds_the_residual_in_place_of_nothing_else():
    conv = torch.nn.Conv2d(4, 4, 1)
    x, res = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    before = res.clone()
    torch.testing.assert_close(pointwise(to_channels_last(x), conv, residual=res), conv(x) + res, rtol=1e-5, atol=1e-6)
    assert torch.equal(res, before)  # the residual itself is not modified


@pytest.mark.parametrize("dilation,size", [(3, (7, 5)), (2, (5, 6, 7))])
def test_dilated_depthwise_on_phases_equals_builtin(dilation, size):
    conv_cls = torch.nn.Conv2d if len(size) == 2 else torch.nn.Conv3d
    conv = conv_cls(4, 4, 3, padding=dilation, dilation=dilation, groups=4)
    x = torch.randn(2, 4, *size)
    y = depthwise(to_channels_last(x), conv)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-6)
    assert is_channels_last(y)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("size", [(6, 5), (4, 5, 3)])
def test_conv_bn_channels_last_equals_conv_then_bn(train, size):
    torch.manual_seed(0)
    conv_cls, bn_cls = conv_type(len(size)), batch_norm_type(len(size))
    conv, bn = conv_cls(3, 6, 3, padding=1), bn_cls(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    bn.train(train)
    assert (bn_affine(bn) is None) == train  # batch statistics cannot be folded
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = bn.eval()(conv(x)) if not train else None
        bn.train(train)
        y = conv_bn_channels_last(conv, bn, x)
        if train:
            ref = torch.nn.functional.batch_norm(conv(x), None, None, bn.weight, bn.bias, training=True)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    assert is_channels_last(y)
    torch.testing.assert_close(conv_channels_last(conv, x), conv(x), rtol=1e-5, atol=1e-6)
