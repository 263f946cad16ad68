"""Parameters of the registered plug-in networks: ``fusionseg bench plug [--dims 2,3]``.

For each MONAI / nnU-Net network registered in :mod:`fusionseg.nets.external` and :mod:`fusionseg.nnunet.models`
(default configuration, in 1, out 2): parameters with its own concatenation skips and with every other
registered fusion at its default skips (add / DFF at every skip, TIF at the deepest; docs/plug.md explains
what changes).
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence

from fusionseg.plug.core import PlugRecord
from fusionseg.plug.describe import change_text, markdown_table

__all__ = ["PLUG_MODELS", "build_parser", "main", "parameter_table"]

# Registered plug-in models (fusionseg.nets.external, fusionseg.nnunet.models), in table order.
PLUG_MODELS = ("monai_basicunet", "monai_dynunet", "monai_swinunetr", "nnunet_plain", "nnunet_resenc")


def parameter_table(dims: Sequence[int] = (2, 3), models: Sequence[str] = PLUG_MODELS) -> str:
    """Markdown table: parameters of each registered plug-in model (default configuration, in 1, out 2)
    with its own concatenation and with every other registered fusion at its default skips."""
    from fusionseg.fusion import default_fusion_levels, list_fusions
    from fusionseg.nets.registry import create_model

    fusions = ("concat", *(f for f in list_fusions() if f != "concat"))
    rows, missing = [], []
    for name in models:
        for d in dims:
            if name.startswith("nnunet_") and importlib.util.find_spec("dynamic_network_architectures") is None:
                missing.append(name)
                continue
            counts, skips = {}, 0
            for fusion in fusions:
                net = create_model(name, in_channels=1, out_channels=2, spatial_dims=d, fusion=fusion)
                record: PlugRecord = net.fusion_plug  # type: ignore[assignment]  # set by plug_fusion
                counts[fusion], skips = record.params_after, record.num_sites
            base = counts["concat"]
            rows.append([name, f"{d}D", f"{base:,}", *(change_text(base, counts[f]) for f in fusions[1:]), skips])
    deepest_only = [f for f in fusions[1:] if len(default_fusion_levels(f, (0, 1))) == 1]
    added = [f"+ {f}" + (" (deepest skip)" if f in deepest_only else "") for f in fusions[1:]]
    columns = ["model", "dims", "original (concat)", *added, "skips"]
    table = markdown_table(columns, rows)
    if missing:
        table += f"\n(not built, dynamic-network-architectures missing: {', '.join(dict.fromkeys(missing))})"
    return table


def build_parser(prog: str = "fusionseg bench plug") -> argparse.ArgumentParser:
    """The options of ``fusionseg bench plug``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,3", help="spatial dims to tabulate, e.g. 3 (default 2,3)")
    return parser


def main(argv: list[str] | None = None, prog: str = "fusionseg bench plug") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    print(parameter_table(tuple(int(d) for d in args.dims.split(",") if d.strip())))
    return 0
