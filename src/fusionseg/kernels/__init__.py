"""Low-level kernels (pure PyTorch) behind the fast paths of the blocks, and the switch that turns them off.

- :mod:`~fusionseg.kernels.conv`: 1×1 convs as matmuls, "same" depthwise convs (dilated ones on
  phase-split sub-grids, a faster 3D CPU backward), few-channel convs as one im2col matmul,
  kernel-2 transposed convs as a matmul, BatchNorm folding — all channels-last out.
- :mod:`~fusionseg.kernels.mlp`: the no-grad MLP ``fc2(GELU(dwconv3(fc1(x))))`` in slabs.
- :mod:`~fusionseg.kernels.dff`: the fused Dynamic Feature Fusion with its hand-written backward.
- :mod:`~fusionseg.kernels.attention`: exact attention with a query-chunked CPU flash backward,
  and the explicit N×N attention of the reference implementations.
- :mod:`~fusionseg.kernels.switch`: ``reference_ops`` — the one switch between fast and reference paths.

Kernels never import blocks or networks.
"""

from fusionseg.kernels.switch import (
    REFERENCE_OPS_ATTRIBUTE,
    reference_ops,
    reference_ops_default,
    set_reference_ops,
    set_reference_ops_default,
)

__all__ = [
    "REFERENCE_OPS_ATTRIBUTE",
    "reference_ops",
    "reference_ops_default",
    "set_reference_ops",
    "set_reference_ops_default",
]
