"""Report of what :func:`fusionseg.plug.plug_fusion` changed in one network (``describe_plug``).

The parameter table of the registered plug-in models is ``fusionseg bench plug``.

Example:
    >>> print(describe_plug(plug_fusion(BasicUNet(spatial_dims=2), "add")))
    BasicUNet + add at skip levels (0, 1, 2, 3): 4 of 4 skips fused; parameters ... → ... (...)
    | block | level | width | fusion params | convs after fusion Δ | upsampler rebuilt (Δ) |
    ...
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fusionseg.plug.core import PlugRecord

__all__ = ["change_text", "describe_plug", "markdown_table"]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table of already formatted cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def change_text(before: int, after: int) -> str:
    """``after`` with its relative change, e.g. ``1,878,986 (-3.6%)``."""
    return f"{after:,} ({(after - before) / before:+.1%})"


def describe_plug(model: nn.Module) -> str:
    """Markdown: the fused blocks, their widths and parameter changes, and the totals before/after."""
    record: PlugRecord | None = getattr(model, "fusion_plug", None)
    if record is None:
        raise ValueError(f"this {type(model).__name__} was not plugged; call fusionseg.plug.plug_fusion(model, ...)")
    head = (
        f"{record.network} + {record.fusion} at skip levels {record.levels}: {len(record.changes)} of "
        f"{record.num_sites} skips fused; parameters {record.params_before:,} → "
        f"{change_text(record.params_before, record.params_after)}"
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
    return head + "\n" + markdown_table(columns, rows)
