"""Plug DFF / TIF (or any registered fusion) into networks users already train.

``plug_fusion(model, "dff")`` replaces every decoder skip concatenation of a MONAI ``BasicUNet``,
``DynUNet``, ``SwinUNETR`` or an nnU-Net ``PlainConvUNet`` / ``ResidualEncoderUNet`` (2D or 3D) by the
fusion, in place; ``describe_plug(model)`` says what changed; ``fusionseg bench plug`` prints the
parameter table of the registered default configurations. See ``docs/plug.md``.

Example:
    >>> from monai.networks.nets import BasicUNet
    >>> net = plug_fusion(BasicUNet(spatial_dims=3, features=(16, 32, 64, 128, 256, 16)), "dff")
    >>> print(describe_plug(net).splitlines()[0])
    BasicUNet + dff at skip levels (0, 1, 2, 3): 4 of 4 skips fused; parameters 5,658,898 → 5,191,402 (-8.3%)
"""

from fusionseg.plug.core import SUPPORTED, PlugRecord, Site, SiteChange, plug_fusion
from fusionseg.plug.describe import describe_plug

__all__ = ["SUPPORTED", "PlugRecord", "Site", "SiteChange", "describe_plug", "plug_fusion"]
