"""Official checkpoints load strictly: key names and shapes listed in ``shared/specs/*_state_dict.txt``.

The seed modules are drop-in: the seed's own calls — ``DFF(dim)(x, skip)`` on 3D tensors, ``TIF(dim_s, dim_l)(e, r)``
on 2D (and 3D) tensors, the official DS-TransUNet's paired ``e, r = cross_att(e, r)`` — run on our classes with
weights in the official layout and give the numbers of a plain formulation of the maths (specs/fusion.md) written
here from those weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

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


# The official TIF branch transformers: (heads, dim_head) of T_s and T_l (the same at every stage).
HEADS_S, HEADS_L = (3, 32), (1, 64)


def _layer_norm(t, sd, key):
    return F.layer_norm(t, t.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"])


def _transformer(t, sd, key, heads, dim_head):
    """One pre-norm layer ``t + Attn(LN(t))``, then ``t + FFN(LN(t))``, written out."""
    p = f"{key}.layers.0"
    h = _layer_norm(t, sd, f"{p}.0.norm")
    q, k, v = (h @ sd[f"{p}.0.fn.to_qkv.weight"].T).chunk(3, dim=-1)
    b, n, _ = t.shape
    q, k, v = (z.reshape(b, n, heads, dim_head).transpose(1, 2) for z in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) * dim_head**-0.5, dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, heads * dim_head)
    if f"{p}.0.fn.to_out.0.weight" in sd:  # absent when heads == 1 and dim_head == dim (identity)
        out = F.linear(out, sd[f"{p}.0.fn.to_out.0.weight"], sd[f"{p}.0.fn.to_out.0.bias"])
    t = t + out
    h = _layer_norm(t, sd, f"{p}.1.norm")
    h = F.linear(
        F.gelu(F.linear(h, sd[f"{p}.1.fn.net.0.weight"], sd[f"{p}.1.fn.net.0.bias"])), *_wb(sd, f"{p}.1.fn.net.3")
    )
    return t + h


def _wb(sd, key):
    return sd[f"{key}.weight"], sd[f"{key}.bias"]


def plain_tif_paired(sd, e, r):
    """The official ``Cross_Att.forward(e, r)`` → (e', r'), from the state dict ``sd``."""
    te, tr = e.flatten(2).transpose(1, 2), r.flatten(2).transpose(1, 2)
    g_e = F.linear(_layer_norm(te, sd, "norm_l").mean(1, keepdim=True), *_wb(sd, "linear_l"))
    g_r = F.linear(_layer_norm(tr, sd, "norm_s").mean(1, keepdim=True), *_wb(sd, "linear_s"))
    r_out = _transformer(torch.cat([g_e, tr], 1), sd, "transformer_s", *HEADS_S)[:, 1:]
    e_out = _transformer(torch.cat([g_r, te], 1), sd, "transformer_l", *HEADS_L)[:, 1:]
    return e_out.transpose(1, 2).reshape(e.shape), r_out.transpose(1, 2).reshape(r.shape)


def plain_dff(sd, x, skip):
    """DFF of the spec, steps 1–5, from the state dict ``sd`` (3D 1×1×1 kernels)."""
    u = torch.cat([x, skip], 1)
    a = torch.sigmoid(F.conv3d(u.mean((2, 3, 4), keepdim=True), sd["conv_atten.0.weight"]))
    v = F.conv3d(u * a, sd["conv_redu.weight"])
    s = torch.sigmoid(F.conv3d(x, *_wb(sd, "conv1")) + F.conv3d(skip, *_wb(sd, "conv2")))
    return v * s


def _tif_state(dim_s: int, dim_l: int) -> dict[str, torch.Tensor]:
    """Random weights in the official layout for widths (dim_s, dim_l): the listing's ``cross_att_1`` key names with
    the official shape rules (checked against the listing itself for 96, 128)."""
    listing = _official_state_dict("ds_transunet_state_dict.txt", "cross_att_1.")
    mlp = {"transformer_s": 128, "transformer_l": 256}
    state = {}
    for key in listing:
        branch = key.split(".")[0]
        dim = dim_s if branch in ("transformer_s", "norm_s") else dim_l
        heads, dim_head = HEADS_S if branch == "transformer_s" else HEADS_L
        inner = heads * dim_head
        if key.endswith(("to_out.0.weight", "to_out.0.bias")) and heads == 1 and dim_head == dim:
            continue  # the identity out-projection has no weights
        shapes = {
            "to_qkv.weight": (3 * inner, dim), "to_out.0.weight": (dim, inner), "to_out.0.bias": (dim,),
            "net.0.weight": (mlp.get(branch, 0), dim), "net.0.bias": (mlp.get(branch, 0),),
            "net.3.weight": (dim, mlp.get(branch, 0)), "net.3.bias": (dim,), "norm.weight": (dim,), "norm.bias": (dim,),
        }  # fmt: skip
        suffix = next((s for s in shapes if key.endswith(s)), None)
        if suffix is not None:
            shape = shapes[suffix]
        elif key.startswith(("norm_s", "norm_l")):
            shape = (dim,)
        elif key.startswith("linear_s"):
            shape = (dim_l, dim_s) if key.endswith("weight") else (dim_l,)
        else:  # linear_l
            shape = (dim_s, dim_l) if key.endswith("weight") else (dim_s,)
        state[key] = torch.randn(shape) * 0.2
    if (dim_s, dim_l) == (96, 128):
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in listing.items()}
    return state


@pytest.mark.parametrize("spatial", [(8, 8), (4, 4, 4)], ids=["2d", "3d"])
def test_seed_tif_call_same_widths_gives_e_plus_r(spatial):
    """The seed: ``TIF(dim_s, dim_l)(e, r)`` = ``e' + r'`` for inputs of one shape; 2D as in the seed, and 3D."""
    state = _tif_state(64, 64)
    tif = TIF(64, 64)  # the seed's constructor call: no spatial_dims
    tif.load_state_dict(state, strict=True)
    e, r = torch.randn(2, 64, *spatial), torch.randn(2, 64, *spatial)
    e_ref, r_ref = plain_tif_paired(state, e, r)
    torch.testing.assert_close(tif(e, r), e_ref + r_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial", [((8, 8), (4, 4)), ((4, 4, 4), (2, 2, 2))], ids=["2d", "3d"])
def test_official_paired_call_on_official_weights(spatial):
    """DS-TransUNet's ``e, r = self.cross_att_1(e, r)`` (widths 128 / 96, r at half e's resolution) on the listing's
    own weights: ``forward_paired`` is the official forward; ``forward`` adds ``linear_s(r')`` resized to e's grid."""
    state = {k: 0.2 * v for k, v in _official_state_dict("ds_transunet_state_dict.txt", "cross_att_1.").items()}
    tif = TIF(96, 128)
    tif.load_state_dict(state, strict=True)
    e, r = torch.randn(1, 128, *spatial[0]), torch.randn(1, 96, *spatial[1])
    e_ref, r_ref = plain_tif_paired(state, e, r)
    e_out, r_out = tif.forward_paired(e, r)
    torch.testing.assert_close(e_out, e_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r_out, r_ref, atol=1e-4, rtol=1e-4)
    r_wide = F.linear(r_ref.movedim(1, -1), *_wb(state, "linear_s")).movedim(-1, 1)
    fused = e_ref + F.interpolate(r_wide, size=e.shape[2:], mode="nearest")
    torch.testing.assert_close(tif(e, r), fused, atol=1e-4, rtol=1e-4)


def test_seed_dff_call_on_official_weights():
    """The seed: ``DFF(dim)(x, skip)`` on 3D tensors, D-Net's decoder weights (dim 384)."""
    state = _official_state_dict("dnet_v2_state_dict.txt", "decoder.steps.0.")
    dff = DFF(384)  # the seed's constructor call
    dff.load_state_dict(state, strict=True)
    x, skip = torch.randn(1, 384, 2, 3, 4), torch.randn(1, 384, 2, 3, 4)
    torch.testing.assert_close(dff(x, skip), plain_dff(state, x, skip), atol=1e-4, rtol=1e-4)


def test_seed_dff_stays_3d():
    with pytest.raises(ValueError, match=r"\(1, 8, 4, 4\)"):
        DFF(8)(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4))
