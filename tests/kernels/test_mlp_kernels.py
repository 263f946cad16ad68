"""The slab MLP kernel equals the whole-tensor MLP and declines when it does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusionseg.kernels.mlp as mlp_kernels
from fusionseg.kernels.mlp import mlp_in_slabs
from fusionseg.layers import conv_type, to_channels_last

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(dim: int, hidden: int, spatial_dims: int) -> torch.nn.Module:
    """fc1 (1×1) → dwconv (3, depthwise) → fc2 (1×1) convs with random weights."""
    torch.manual_seed(1)
    conv = conv_type(spatial_dims)
    mlp = torch.nn.Module()
    mlp.fc1, mlp.fc2 = conv(dim, hidden, 1), conv(hidden, dim, 1)
    mlp.dwconv = conv(hidden, hidden, 3, padding=1, groups=hidden)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return mlp


def _conv(x, conv, **kw):
    fn = F.conv3d if x.ndim == 5 else F.conv2d
    return fn(x, conv.weight, conv.bias, **kw)


@pytest.mark.parametrize("size,slab_voxels", [((11, 6, 5), 60), ((9, 4, 3), 12), ((13, 7), 14), ((5, 4), 4)])
@pytest.mark.parametrize("residual", [False, True])
def test_mlp_in_slabs_equals_whole_tensor_mlp(monkeypatch, size, slab_voxels, residual):
    # slabs of 2, 1, 2 and 1 planes: first and last slab touch the volume faces, the middle ones need both halos
    monkeypatch.setattr(mlp_kernels, "SLAB_VOXELS", slab_voxels)
    mlp = _mlp(3, 12, spatial_dims=len(size))
    x = to_channels_last(torch.randn(2, 3, *size))
    with torch.no_grad():
        y = mlp_in_slabs(x, mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2, residual=residual)
        ref = _conv(F.gelu(_conv(_conv(x, mlp.fc1), mlp.dwconv, padding=1, groups=12)), mlp.fc2)
        assert torch.allclose(y, ref + x if residual else ref, atol=1e-5)
        assert y.movedim(1, -1).is_contiguous()  # channels-last out
    # not applicable: gradients needed, NC* layout, or a single slab
    assert mlp_in_slabs(x, mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2) is None
    with torch.no_grad():
        assert mlp_in_slabs(x.contiguous(), mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2) is None
        monkeypatch.setattr(mlp_kernels, "SLAB_VOXELS", 10**9)
        assert mlp_in_slabs(x, mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2) is None
