"""Every fusion module exports with ``torch.export`` and the exported program gives the same numbers."""

from __future__ import annotations

import pytest
import torch

from fusionseg.fusion import TIF, create_fusion


@pytest.mark.parametrize(
    ("name", "spatial_dims", "shape"),
    [
        ("dff", 3, (1, 8, 4, 4, 4)),
        ("dff", 2, (2, 8, 6, 6)),
        ("tif", 2, (1, 8, 6, 6)),
        ("tif", 3, (1, 8, 2, 4, 4)),
        ("concat", 3, (1, 8, 4, 4, 4)),
        ("add", 2, (1, 8, 6, 6)),
    ],
)
def test_torch_export_matches_eager(name, spatial_dims, shape):
    fusion = create_fusion(name, 8, spatial_dims=spatial_dims).eval()
    x, skip = torch.randn(shape), torch.randn(shape)
    program = torch.export.export(fusion, (x, skip))
    x2, skip2 = torch.randn(shape), torch.randn(shape)
    torch.testing.assert_close(program.module()(x2, skip2), fusion(x2, skip2), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks become constants
def test_tif_paired_and_different_grids_trace():
    tif = TIF(8, 16, spatial_dims=2, heads_s=2, dim_head_s=4, mlp_s=16, heads_l=1, dim_head_l=8, mlp_l=16).eval()
    e, r = torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        traced = torch.jit.trace(tif, (e, r))
        e2, r2 = torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4)
        torch.testing.assert_close(traced(e2, r2), tif(e2, r2), atol=1e-5, rtol=1e-5)
