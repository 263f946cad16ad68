"""DFF and TIF on plain tensors, called the way the original code calls them, checked against the papers' steps.

- DFF(dim) on 3D feature maps: ``DFF(dim)(x, skip)`` with x, skip of shape (B, dim, D, H, W).
- TIF(dim_s, dim_l) on 2D feature maps: the plug-and-play fused form ``TIF(...)(e, r)`` (e' + r'), and
  the DS-TransUNet form ``forward_paired(e, r)`` with the coarse branch r at half the resolution.

Each output is compared with the module's plain path, the papers' steps literally
(``fusionseg.kernels.reference_ops``: explicit concat and gated copy, explicit N×N attention).

    python examples/fusion_modules.py            # the sizes of the original code (about a second)
    python examples/fusion_modules.py --small    # tiny tensors
"""

from __future__ import annotations

import argparse

import torch

from fusionseg import DFF, TIF
from fusionseg.kernels import reference_ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny tensors (a smoke run)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dim, size = (8, 8) if args.small else (32, 16)

    # DFF(dim) on 3D tensors: x = the upsampled decoder feature, skip = the encoder feature (same shape).
    block = DFF(dim)
    x, skip = torch.randn(1, dim, size, size, size), torch.randn(1, dim, size, size, size)
    with torch.no_grad():
        out = block(x, skip)
        with reference_ops(block):
            diff = (out - block(x, skip)).abs().max().item()
    print(f"DFF({dim}): x {tuple(x.shape)} + skip {tuple(skip.shape)} -> {tuple(out.size())}; "
          f"{sum(p.numel() for p in block.parameters())} parameters; max |fast - reference| {diff:.1e}")  # fmt: skip
    assert out.shape == x.shape and diff < 1e-5

    # TIF(dim_s, dim_l) on 2D tensors, fused form: e' + r' (equal widths and grids, as in the plug-and-play code).
    block = TIF(dim, dim)  # the seed call: dimensionality from the input
    e, r = torch.randn(1, dim, 2 * size, 2 * size), torch.randn(1, dim, 2 * size, 2 * size)
    with torch.no_grad():
        out = block(e, r)
        with reference_ops(block):
            diff = (out - block(e, r)).abs().max().item()
    print(f"TIF({dim}, {dim}): e {tuple(e.shape)} + r {tuple(r.shape)} -> {tuple(out.size())}; "
          f"max |fast - reference| {diff:.1e}")  # fmt: skip
    assert out.shape == e.shape and diff < 1e-4

    # DS-TransUNet's paired form: r has 3/4 of e's width (96 vs 128 at stage 1) and half its resolution.
    dim_s, dim_l = (6, 8) if args.small else (96, 128)
    block = TIF(dim_s, dim_l)
    e, r = torch.randn(1, dim_l, 2 * size, 2 * size), torch.randn(1, dim_s, size, size)
    with torch.no_grad():
        e_out, r_out = block.forward_paired(e, r)
        with reference_ops(block):
            e_ref, r_ref = block.forward_paired(e, r)
        diff = max((e_out - e_ref).abs().max().item(), (r_out - r_ref).abs().max().item())
    print(f"TIF({dim_s}, {dim_l}).forward_paired: e {tuple(e.shape)}, r {tuple(r.shape)} -> "
          f"{tuple(e_out.shape)}, {tuple(r_out.shape)}; max |fast - reference| {diff:.1e}")  # fmt: skip
    assert e_out.shape == e.shape and r_out.shape == r.shape and diff < 1e-4
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
