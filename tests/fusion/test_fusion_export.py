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


class _Paired(torch.nn.Module):
    def __init__(self, tif: TIF) -> None:
        super().__init__()
        self.tif = tif

    def forward(self, e: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tif.forward_paired(e, r)


def test_tif_paired_and_fused_on_different_grids_export():
    tif = TIF(8, 16, spatial_dims=2, heads_s=2, dim_head_s=4, mlp_s=16, heads_l=1, dim_head_l=8, mlp_l=16).eval()
    e, r = torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4)
    paired = torch.export.export(_Paired(tif), (e, r)).module()
    fused = torch.export.export(tif, (e, r)).module()
    e2, r2 = torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4)
    for got, want in zip(paired(e2, r2), tif.forward_paired(e2, r2)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused(e2, r2), tif(e2, r2), atol=1e-5, rtol=1e-5)
