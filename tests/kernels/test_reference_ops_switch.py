"""The reference_ops switch: default, per-model setter, context manager restoring each module's own value."""

from __future__ import annotations

import torch

from fusionseg.kernels import (
    REFERENCE_OPS_ATTRIBUTE,
    reference_ops,
    reference_ops_default,
    set_reference_ops,
    set_reference_ops_default,
)
from fusionseg.nets.dlk import DLKBlock


def _flags(module: torch.nn.Module) -> list[bool]:
    return [getattr(m, REFERENCE_OPS_ATTRIBUTE) for m in module.modules() if hasattr(m, REFERENCE_OPS_ATTRIBUTE)]


def test_default_is_fast_and_applies_to_modules_built_afterwards():
    assert reference_ops_default() is False
    fast = DLKBlock(4, spatial_dims=2)
    previous = set_reference_ops_default(True)
    try:
        built_in_reference = DLKBlock(4, spatial_dims=2)
    finally:
        assert set_reference_ops_default(previous) is True
    assert previous is False and reference_ops_default() is False
    assert set(_flags(fast)) == {False} and set(_flags(built_in_reference)) == {True}
    assert len(_flags(fast)) == 4  # block, attn module, DLK layer, MLP


def test_setter_and_context_manager():
    block = DLKBlock(4, spatial_dims=2)
    assert set_reference_ops(block) is block and set(_flags(block)) == {True}
    set_reference_ops(block, False)
    block.mlp.reference_ops = True  # a mixed state is restored exactly
    with reference_ops(block) as same:
        assert same is block and set(_flags(block)) == {True}
    assert block.mlp.reference_ops is True and block.attn.reference_ops is False
    try:
        with reference_ops(block, False):
            assert set(_flags(block)) == {False}
            raise RuntimeError
    except RuntimeError:
        pass
    assert block.mlp.reference_ops is True  # restored on errors too


def test_modules_without_two_implementations_are_left_alone():
    conv = torch.nn.Conv2d(2, 2, 1)
    set_reference_ops(conv)
    assert not hasattr(conv, REFERENCE_OPS_ATTRIBUTE)
