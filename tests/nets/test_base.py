"""The network base class, the one input-size rule, and the registry's recorded config and protocol check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fusionseg.errors import InputError
from fusionseg.nets import SegmentationNet, check_input_size, create_model, nearest_valid_size, registry
from fusionseg.nets.base import nearest_multiple, round_up_to_multiple


@pytest.mark.parametrize(
    ("sizes", "multiple", "nearest"),
    [
        ((33, 80, 20), 32, (32, 96, 32)),  # 80/32 = 2.5 rounds up; below the multiple → the multiple
        ((96, 160, 200), 64, (128, 192, 192)),  # halves round up (not to even, as Python's round would)
        ((18, 16, 1), 4, (20, 16, 4)),
        ((7, 8, 10, 11), 3, (6, 9, 9, 12)),  # odd multiples: 7/3 = 2.33 → 6, 10/3 = 3.33 → 9, 11/3 = 3.67 → 12
        ((0, 5), 1, (1, 5)),
    ],
)
def test_nearest_valid_size(sizes, multiple, nearest):
    assert nearest_valid_size(sizes, multiple) == nearest


@pytest.mark.parametrize(
    ("values", "multiple", "nearest", "up"),
    [
        ([80, 192, 160], 32, [96, 192, 160], [96, 192, 160]),  # an nnU-Net patch fitted for D-Net
        ([16, 47, 48], 32, [32, 32, 64], [32, 64, 64]),
        ([100, 70], 64, [128, 64], [128, 128]),
        ([1, 16, 17, 95], 16, [16, 16, 16, 96], [16, 16, 32, 96]),
        ([5, 7], 1, [5, 7], [5, 7]),
    ],
)
def test_the_two_rounding_rules(values, multiple, nearest, up):
    assert [nearest_multiple(v, multiple) for v in values] == nearest
    assert [round_up_to_multiple(v, multiple) for v in values] == up


def test_check_input_size_messages():
    check_input_size(torch.zeros(1, 2, 8, 16), 2, 2, 8, "Net")  # valid: no error
    with pytest.raises(InputError, match=r"Net expects input \(B, 2, D, H, W\) for in_channels=2, spatial_dims=3; got"):
        check_input_size(torch.zeros(1, 2, 8, 8), 2, 3, 8, "Net")
    with pytest.raises(InputError, match=r"got shape \(1, 3, 8, 8\)"):
        check_input_size(torch.zeros(1, 3, 8, 8), 2, 2, 8, "Net")
    with pytest.raises(ValueError, match=r"multiple of 8; got \(12, 8\), nearest valid size \(16, 8\)") as info:
        check_input_size(torch.zeros(1, 2, 12, 8), 2, 2, 8, "Net")
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)  # one actionable line


class _Tiny(SegmentationNet):
    def __init__(self, in_channels=1, out_channels=2, spatial_dims=3, width=(4,)):
        super().__init__(in_channels, out_channels, spatial_dims, size_multiple=2)
        self.conv = nn.Conv3d(in_channels, out_channels, 1) if spatial_dims == 3 else nn.Conv2d(in_channels, 2, 1)

    def forward(self, x):
        self.check_input(x)
        return self.conv(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 0}, "in_channels must be a positive int"),
        ({"out_channels": True}, "out_channels must be a positive int"),
        ({"spatial_dims": 1}, "spatial_dims must be one of"),
    ],
)
def test_base_class_validates_its_attributes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _Tiny(**kwargs)
    net = _Tiny()
    assert (net.in_channels, net.out_channels, net.spatial_dims, net.size_multiple) == (1, 2, 3, 2)
    with pytest.raises(InputError, match=r"_Tiny needs every spatial size to be a multiple of 2"):
        net(torch.zeros(1, 1, 2, 2, 3))


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(registry._MODELS, "_toy_base", _Tiny)
    return "_toy_base"


def test_registry_records_a_json_copy_of_the_given_kwargs(toy_registered):
    width = {"levels": (np.int64(4), 8.5), "nested": {"a": [1, (2, 3)]}}
    net = create_model("_TOY_BASE", in_channels=1, width=width)
    assert net.config == {
        "name": "_toy_base",
        "kwargs": {"in_channels": 1, "width": {"levels": [4, 8.5], "nested": {"a": [1, [2, 3]]}}},
    }
    assert type(net.config["kwargs"]["width"]["levels"][0]) is int  # numpy int → int
    width["nested"]["a"].append(9)  # a copy: later changes of the caller's objects do not leak in
    assert net.config["kwargs"]["width"]["nested"]["a"] == [1, [2, 3]]
    json.dumps(net.config)
    rebuilt = create_model(net.config["name"], **net.config["kwargs"])
    assert rebuilt.config == net.config


def test_registry_overwrites_a_factory_config_and_rejects_non_json_kwargs(toy_registered, monkeypatch):
    def factory(**kwargs):
        model = _Tiny()
        model.config = {"name": "something else", "kwargs": {"hand": "built"}}
        return model

    monkeypatch.setitem(registry._MODELS, "_toy_factory", factory)
    assert create_model("_toy_factory").config == {"name": "_toy_factory", "kwargs": {}}
    with pytest.raises(TypeError, match="not JSON-able"):
        create_model(toy_registered, width=torch.zeros(1))


def test_registry_rejects_a_model_without_the_attributes(monkeypatch):
    monkeypatch.setitem(registry._MODELS, "_toy_plain", lambda **kw: nn.Linear(2, 2))
    with pytest.raises(TypeError, match="lacks spatial_dims, in_channels, out_channels, size_multiple"):
        create_model("_toy_plain")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
