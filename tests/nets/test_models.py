"""One tester for every registered network (smp-style): the same table of checks for each model.

Every name in ``list_models()`` needs an entry in ``MODEL_TABLE`` (a small configuration that runs
in well under a second); a registered model without one fails ``test_every_registered_model_has_an_entry``.
Checks, for 2D and 3D where supported: the model attributes and ``config``; forward shapes (and the
deep-supervision tuple, full resolution first); backward reaching every parameter; fast and reference
implementations agreeing; the state_dict round trip through ``create_model(**config)``; a bad input size
raising ``InputError`` that names the nearest valid size; bad constructor arguments raising ValueError;
the ``spatial_dims`` default (3, except DS-TransUNet: 2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from extras import NEEDS_DNA, require
from fusionseg.errors import InputError
from fusionseg.kernels import reference_ops
from fusionseg.nets import create_model, list_models, nearest_valid_size
from fusionseg.nets.registry import MODEL_ATTRIBUTES

IN_CHANNELS, OUT_CHANNELS = 2, 3
BAD_IO = ({"in_channels": 0}, {"out_channels": 0}, {"spatial_dims": 1}, {"spatial_dims": 4})


@dataclass(frozen=True)
class ModelCase:
    """How to test one registered model cheaply."""

    kwargs: dict  # small configuration (in/out channels, spatial_dims, deep_supervision are added by the tests)
    sizes: dict[int, tuple[int, ...]]  # spatial_dims → a valid (small) input size
    default_spatial_dims: int = 3
    deep_supervision: bool = True  # has a deep_supervision option returning a tuple
    deep_supervision_in_eval: bool = True  # False: eval mode returns the full-resolution logits only (MONAI DynUNet)
    checks_input: bool = True  # raises InputError on bad input shapes
    bad_kwargs: tuple[dict, ...] = BAD_IO
    register: Callable[[], None] | None = None  # for models registered outside fusionseg.nets
    needs: tuple[str, str] | None = None  # (module, skip reason naming the optional extra) when one is needed
    slow_dims: tuple[int, ...] = ()  # spatial_dims whose cases are marked slow


TINY_DNET = {"dims": (8, 16, 32, 64, 128), "depths": (1, 1, 1, 1, 1)}
TINY_DS_TRANSUNET = {
    "dim": 16,
    "embed_dim2": 8,
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 1, 2, 2),
    "depths2": (1, 1, 1, 1),
    "num_heads2": (1, 1, 1, 1),
    "decoder_heads": (2, 1, 1),
    "window_size": 4,
    "tif": {"heads_s": 2, "dim_head_s": 8, "mlp_s": 16, "heads_l": 1, "dim_head_l": 8, "mlp_l": 16},
}
DS_TRANSUNET_BAD = (*BAD_IO, {"dim": 30}, {"decoder_heads": (3, 1, 1)})

MODEL_TABLE: dict[str, ModelCase] = {
    "dnet": ModelCase(
        TINY_DNET, {2: (32, 64), 3: (32, 32, 32)}, bad_kwargs=(*BAD_IO, {"dims": (15, 32, 64, 128, 256)})
    ),
    "dnet_small": ModelCase(TINY_DNET, {2: (64, 32), 3: (32, 32, 32)}, bad_kwargs=(*BAD_IO, {"depths": (1, 1)})),
    "dnet_v1": ModelCase(TINY_DNET, {2: (32, 64), 3: (32, 32, 32)}, bad_kwargs=(*BAD_IO, {"drop_path_rate": 1.0})),
    "unet": ModelCase(
        {"features": (4, 8, 16), "fusion": "dff"}, {2: (8, 12), 3: (8, 4, 8)}, bad_kwargs=(*BAD_IO, {"fusion": "sum"})
    ),
    "ds_transunet": ModelCase(
        TINY_DS_TRANSUNET, {2: (64, 128), 3: (64, 64, 64)}, 2, bad_kwargs=DS_TRANSUNET_BAD, slow_dims=(3,)
    ),
    "ds_transunet_small": ModelCase(TINY_DS_TRANSUNET, {2: (64, 64), 3: (64, 64, 64)}, 2, bad_kwargs=DS_TRANSUNET_BAD),
    # MONAI / nnU-Net networks with a pluggable skip fusion (nets.external, nnunet.models, plug).
    "monai_basicunet": ModelCase(
        {"features": (4, 4, 8, 8, 16, 4), "fusion": "dff"},
        {2: (32, 48), 3: (16, 16, 32)},
        deep_supervision=False,
        bad_kwargs=({"spatial_dims": 1}, {"features": (8, 16)}, {"deep_supervision": True}, {"fusion": "sum"}),
    ),
    "monai_dynunet": ModelCase(
        {"filters": (4, 8, 16), "fusion": "dff"},
        {2: (16, 24), 3: (8, 8, 12)},
        deep_supervision_in_eval=False,
        bad_kwargs=(*BAD_IO, {"fusion": "sum"}, {"filters": (4,)}),
    ),
    "monai_swinunetr": ModelCase(
        {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "fusion": "dff"},
        {2: (32, 64), 3: (64, 32, 32)},  # instance norm in training needs > 1 voxel at 1/32
        deep_supervision=False,
        bad_kwargs=({"spatial_dims": 1}, {"fusion": "sum"}, {"deep_supervision": True}),
    ),
    "nnunet_plain": ModelCase(
        {"features": (4, 8, 16), "fusion": "dff"},
        {2: (16, 24), 3: (8, 8, 12)},
        bad_kwargs=(*BAD_IO, {"fusion": "sum"}),
        needs=("dynamic_network_architectures", NEEDS_DNA),
    ),
    "nnunet_resenc": ModelCase(
        {"features": (4, 8, 16), "n_blocks_per_stage": (1, 1, 1), "fusion": "dff"},
        {2: (16, 24), 3: (8, 8, 12)},
        bad_kwargs=(*BAD_IO, {"fusion": "sum"}),
        needs=("dynamic_network_architectures", NEEDS_DNA),
    ),
}

# Registered models that cannot be built from a few arguments, with the tests that cover them instead.
TESTED_ELSEWHERE = {
    "nnunet_planned": "rebuilt from the plans of an nnU-Net checkpoint: tests/nnunet/test_importer.py",
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _cases() -> list:
    params = []
    for name in sorted(set(MODEL_TABLE) | set(list_models()) - set(TESTED_ELSEWHERE)):
        case = MODEL_TABLE.get(name)
        for dims in sorted(case.sizes) if case else [None]:
            marks = [pytest.mark.slow] if case and dims in case.slow_dims else []
            params.append(pytest.param(name, dims, marks=marks, id=f"{name}-{dims}d" if dims else name))
    return params


def _case(name: str) -> ModelCase:
    case = MODEL_TABLE.get(name)
    if case is None:
        pytest.fail(f"registered model {name!r} has no entry in MODEL_TABLE (tests/nets/test_models.py); add one")
    if name not in list_models():
        if case.register is None:
            pytest.fail(f"MODEL_TABLE lists {name!r}, which is not registered; remove the entry or add a register hook")
        case.register()
    if case.needs is not None:
        require(*case.needs)
    return case


def _kwargs(name: str, spatial_dims: int, extra: dict | None = None) -> dict:
    kwargs = {"in_channels": IN_CHANNELS, "out_channels": OUT_CHANNELS, "spatial_dims": spatial_dims}
    return {**kwargs, **MODEL_TABLE[name].kwargs, **(extra or {})}


def _build(name: str, spatial_dims: int, seed: int = 0, **extra) -> torch.nn.Module:
    _case(name)
    torch.manual_seed(seed)
    model = create_model(name, **_kwargs(name, spatial_dims, extra))
    with torch.no_grad():  # D-Net's layer scale starts at 1e-6: make the residual branches count
        for pname, p in model.named_parameters():
            if pname.endswith("layer_scale"):
                p.fill_(0.5)
    return model


def _input(name: str, spatial_dims: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, IN_CHANNELS, *MODEL_TABLE[name].sizes[spatial_dims])


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def test_every_registered_model_has_an_entry():
    missing = sorted(set(list_models()) - set(MODEL_TABLE) - set(TESTED_ELSEWHERE))
    assert not missing, f"add MODEL_TABLE entries in tests/nets/test_models.py for {missing}"


@pytest.mark.parametrize(("name", "spatial_dims"), _cases())
def test_attributes_config_and_forward_shapes(name, spatial_dims):
    case = _case(name)
    extra = {"deep_supervision": True} if case.deep_supervision else {}
    model = _build(name, spatial_dims, **extra)
    expected = {"in_channels": IN_CHANNELS, "out_channels": OUT_CHANNELS, "spatial_dims": spatial_dims}
    assert {a: getattr(model, a) for a in expected} == expected
    assert all(hasattr(model, a) for a in MODEL_ATTRIBUTES) and model.size_multiple >= 1
    assert all(s % model.size_multiple == 0 for s in case.sizes[spatial_dims])
    given = json.loads(json.dumps(_kwargs(name, spatial_dims, extra)))
    assert model.config == {"name": name, "kwargs": given}
    x = _input(name, spatial_dims)
    size = tuple(x.shape[2:])
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            outs = model(x)
        assert isinstance(outs, tuple) == (case.deep_supervision and (train or case.deep_supervision_in_eval))
        for out in _as_tuple(outs):
            assert out.shape[:2] == (2, OUT_CHANNELS) and out.ndim == spatial_dims + 2
            assert all(s % o == 0 for s, o in zip(size, out.shape[2:])) and torch.isfinite(out).all()
        assert tuple(_as_tuple(outs)[0].shape[2:]) == size  # full resolution first
    if case.deep_supervision:
        single = _build(name, spatial_dims, deep_supervision=False).eval()
        with torch.no_grad():
            out = single(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, OUT_CHANNELS, *size)


@pytest.mark.parametrize(("name", "spatial_dims"), _cases())
def test_backward_reaches_every_parameter(name, spatial_dims):
    case = _case(name)
    model = _build(name, spatial_dims, **({"deep_supervision": True} if case.deep_supervision else {})).train()
    x = _input(name, spatial_dims).requires_grad_()
    outs = _as_tuple(model(x))
    sum(o.square().mean() + o.mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "spatial_dims"), _cases())
def test_fast_and_reference_implementations_agree(name, spatial_dims):
    case = _case(name)
    model = _build(name, spatial_dims, **({"deep_supervision": True} if case.deep_supervision else {})).eval()
    x = _input(name, spatial_dims, batch=1)
    with torch.no_grad():
        fast = _as_tuple(model(x))
        with reference_ops(model):
            reference = _as_tuple(model(x))
    for f, r in zip(fast, reference, strict=True):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())


@pytest.mark.parametrize(("name", "spatial_dims"), _cases())
def test_state_dict_round_trip_through_config(name, spatial_dims):
    _case(name)
    model = _build(name, spatial_dims).eval()
    config = json.loads(json.dumps(model.config))  # what a checkpoint stores
    clone = create_model(config["name"], **config["kwargs"]).eval()
    assert type(clone) is type(model) and clone.config == model.config
    clone.load_state_dict(model.state_dict(), strict=True)
    x = _input(name, spatial_dims, batch=1)
    with torch.no_grad():
        for a, b in zip(_as_tuple(model(x)), _as_tuple(clone(x)), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "spatial_dims"), _cases())
def test_bad_input_raises_input_error_with_the_nearest_valid_size(name, spatial_dims):
    case = _case(name)
    if not case.checks_input:
        pytest.skip(f"{name} is a benchmark peer without an input check")
    model = _build(name, spatial_dims)
    m, valid = model.size_multiple, list(case.sizes[spatial_dims])
    if m == 1:
        pytest.skip(f"{name} takes any size")
    bad = [valid[0] + m // 2 - 1 + (m == 2), *valid[1:]]  # just below half-way: rounds back down when m > 2
    with pytest.raises(InputError, match=f"multiple of {m}") as info:
        model(torch.randn(1, IN_CHANNELS, *bad))
    assert f"nearest valid size {nearest_valid_size(bad, m)}" in str(info.value)
    assert nearest_valid_size(bad, m) == tuple(valid) or m == 2
    with pytest.raises(InputError, match=f"in_channels={IN_CHANNELS}"):
        model(torch.randn(1, IN_CHANNELS + 1, *valid))
    with pytest.raises(InputError, match="expects input"):
        model(torch.randn(1, IN_CHANNELS, *valid[:-1]))


@pytest.mark.parametrize("name", sorted(MODEL_TABLE))
def test_bad_constructor_arguments_raise_value_error(name):
    case = _case(name)
    spatial_dims = min(case.sizes)
    for bad in case.bad_kwargs:
        with pytest.raises(ValueError):
            create_model(name, **_kwargs(name, spatial_dims, bad))


@pytest.mark.parametrize("name", sorted(MODEL_TABLE))
def test_spatial_dims_default(name):
    case = _case(name)
    kwargs = {k: v for k, v in _kwargs(name, case.default_spatial_dims).items() if k != "spatial_dims"}
    model = create_model(name, **kwargs)
    assert model.spatial_dims == case.default_spatial_dims
