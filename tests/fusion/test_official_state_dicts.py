"""Official checkpoints load strictly: key names and shapes listed in ``shared/specs/*_state_dict.txt``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusionseg.fusion import DFF, TIF

SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "specs"


def _official_state_dict(filename: str, prefix: str) -> dict[str, torch.Tensor]:
    """Random tensors with the official names (prefix stripped) and shapes listed in ``filename``."""
    path = SPECS / filename
    if not path.is_file():
        pytest.skip(f"{path} is absent (the specs folder ships beside the repo, not in it)")
    state = {}
    for line in path.read_text().splitlines():
        if line.startswith(prefix):
            key, shape = line.split("\t")
            dims = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
            state[key[len(prefix) :]] = torch.randn(dims)
    assert state, f"no key starts with {prefix!r} in {path}"
    return state


def test_ds_transunet_cross_attention_loads_into_tif():
    state = _official_state_dict("ds_transunet_state_dict.txt", "cross_att_1.")
    tif = TIF(96, 128, spatial_dims=2)
    tif.load_state_dict(state, strict=True)
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in tif.parameters()) == 186_720
    torch.testing.assert_close(tif.linear_s.weight, state["linear_s.weight"], atol=0, rtol=0)
    e, r = torch.randn(1, 128, 8, 8), torch.randn(1, 96, 4, 4)
    assert tif(e, r).shape == e.shape  # the fused form runs on official weights (linear_s maps widths)


def test_dnet_decoder_step_loads_into_dff():
    state = _official_state_dict("dnet_v2_state_dict.txt", "decoder.steps.0.")
    dff = DFF(384, spatial_dims=3)
    dff.load_state_dict(state, strict=True)
    assert sum(v.numel() for v in state.values()) == 6 * 384**2 + 2 * 384 + 2
    torch.testing.assert_close(dff.conv_redu.weight, state["conv_redu.weight"], atol=0, rtol=0)
