"""Reports of what :func:`fusionseg.plug.plug_fusion` changed: per network (``describe_plug``) and for the
registered default configurations (``parameter_table``, printed by ``python -m fusionseg.plug``).

Example:
    >>> print(describe_plug(plug_fusion(BasicUNet(spatial_dims=2), "add")))
    BasicUNet + add at skip levels (0, 1, 2, 3): 4 of 4 skips fused; parameters ... → ... (...)
    | block | level | width | fusion params | convs after fusion Δ | upsampler rebuilt (Δ) |
    ...
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from torch import nn

from fusionseg.plug.core import PlugRecord

__all__ = ["PLUG_MODELS", "describe_plug", "parameter_table"]

# Registered plug-in models (fusionseg.nets.external), in table order.
PLUG_MODELS = ("monai_basicunet", "monai_dynunet", "monai_swinunetr", "nnunet_plain", "nnunet_resenc")


def _table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def _change(before: int, after: int) -> str:
    return f"{after:,} ({(after - before) / before:+.1%})"


def describe_plug(model: nn.Module) -> str:
    """Markdown: the fused blocks, their widths and parameter changes, and the totals before/after."""
    record: PlugRecord | None = getattr(model, "fusion_plug", None)
    if record is None:
        raise ValueError(f"this {type(model).__name__} was not plugged; call fusionseg.plug.plug_fusion(model, ...)")
    head = (
        f"{record.network} + {record.fusion} at skip levels {record.levels}: {len(record.changes)} of "
        f"{record.num_sites} skips fused; parameters {record.params_before:,} → "
        f"{_change(record.params_before, record.params_after)}"
    )
    if not record.changes:
        return head + " (network unchanged)"
    rows = [
        [
            c.name,
            c.level,
            c.width,
            f"{c.fusion_params:,}",
            f"{c.reader_params_delta:+,}",
            f"{c.upsampler} ({c.upsampler_params_delta:+,})" if c.upsampler else "–",
        ]
        for c in record.changes
    ]
    columns = ["block", "level", "width", "fusion params", "convs after fusion Δ", "upsampler rebuilt (Δ)"]
    return head + "\n" + _table(columns, rows)


def parameter_table(dims: Sequence[int] = (2, 3), models: Sequence[str] = PLUG_MODELS) -> str:
    """Markdown table: parameters of each registered plug-in model (default configuration, in 1, out 2)
    with its own concatenation and with add / DFF (every skip) / TIF (deepest skip)."""
    from fusionseg.nets.registry import create_model

    fusions = ("concat", "add", "dff", "tif")
    rows, missing = [], []
    for name in models:
        for d in dims:
            if name.startswith("nnunet_") and importlib.util.find_spec("dynamic_network_architectures") is None:
                missing.append(name)
                continue
            counts, skips = {}, 0
            for fusion in fusions:
                net = create_model(name, in_channels=1, out_channels=2, spatial_dims=d, fusion=fusion)
                counts[fusion], skips = net.fusion_plug.params_after, net.fusion_plug.num_sites
            base = counts["concat"]
            rows.append([name, f"{d}D", f"{base:,}", *(_change(base, counts[f]) for f in fusions[1:]), skips])
    columns = ["model", "dims", "original (concat)", "+ add", "+ dff", "+ tif (deepest skip)", "skips"]
    table = _table(columns, rows)
    if missing:
        table += f"\n(not built, dynamic-network-architectures missing: {', '.join(dict.fromkeys(missing))})"
    return table
