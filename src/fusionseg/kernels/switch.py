"""The one switch between the fast kernels and the reference implementations.

Every module that has two implementations of its forward pass carries a boolean attribute
``reference_ops`` and reads nothing else to choose:

- ``False`` (default): the fast kernels of :mod:`fusionseg.kernels` (channels-last matmuls,
  phase-split dilated convs, chunked flash attention, ...);
- ``True``: the reference implementation, the original papers' op sequence (``nn.Conv`` modules on
  the caller's layout, explicit N×N attention matrices). Same numbers (tests check both paths
  against each other); it serves parity tests and is the baseline of the benchmarks.

Modules take the global default when they are built; :func:`set_reference_ops` and the context
manager :func:`reference_ops` switch a built model (every submodule at once).

Example:
    >>> net = create_model("dnet_small", in_channels=1, out_channels=2, spatial_dims=2, deep_supervision=False)
    >>> x = torch.randn(1, 1, 64, 64)
    >>> with reference_ops(net):          # the original's op sequence, restored on exit
    ...     plain = net(x)
    >>> torch.allclose(net(x), plain, atol=1e-5)   # fast kernels (the default)
    True
    >>> _ = set_reference_ops(net, True)   # the whole model, until switched back
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = [
    "REFERENCE_OPS_ATTRIBUTE",
    "reference_ops",
    "reference_ops_default",
    "set_reference_ops",
    "set_reference_ops_default",
]

REFERENCE_OPS_ATTRIBUTE = "reference_ops"
_default = False


def reference_ops_default() -> bool:
    """The value modules built from now on take for ``reference_ops`` (False: fast kernels)."""
    return _default


def set_reference_ops_default(enabled: bool) -> bool:
    """Set the default of modules built from now on; returns the previous default."""
    global _default
    previous, _default = _default, bool(enabled)
    return previous


def _dual_path_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if hasattr(m, REFERENCE_OPS_ATTRIBUTE)]


def set_reference_ops(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Run every submodule of ``module`` with two implementations on the reference (True) or fast (False) path.

    Returns ``module``. Weights, state_dict and outputs (up to float rounding) are the same either way.
    """
    for m in _dual_path_modules(module):
        setattr(m, REFERENCE_OPS_ATTRIBUTE, bool(enabled))
    return module


@contextlib.contextmanager
def reference_ops(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``set_reference_ops(module, enabled)`` inside the ``with`` block; every submodule's own value is restored."""
    saved = [(m, getattr(m, REFERENCE_OPS_ATTRIBUTE)) for m in _dual_path_modules(module)]
    set_reference_ops(module, enabled)
    try:
        yield module
    finally:
        for m, value in saved:
            setattr(m, REFERENCE_OPS_ATTRIBUTE, value)
