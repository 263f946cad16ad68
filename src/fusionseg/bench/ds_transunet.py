"""DS-TransUNet benchmark: forward / training-step time and peak memory, baselines in the same run.

Attention table (``--big-batch-size``×3×``--big-size``², fp32; runs first, its steps take minutes): the
official preset's training step with this project's attention (``scaled_dot_product_attention``
in the Swin windows and the TIF global attention) against the original's plain formulation
(explicit q·kᵀ → softmax → ·v matrices, same weights, ``reference_ops``), plus activation checkpointing. Ratios are
against the explicit row.

Model table (``--batch-size``×3×``--size``²): the official preset, the small preset and MONAI's 2D
SwinUNETR (feature_size 48) as a peer — forward (eval, no grad) and one training step
(forward + 0.6/0.2/0.2 BCE loss + backward + SGD step).

Usage:
    fusionseg bench ds-transunet                 # full run (the 512² attention table needs ~12 GB RAM)
    fusionseg bench ds-transunet --quick         # smoke run: small sizes, small preset only
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.bench.common import format_table, measure, peak_memory_mb, time_call
from fusionseg.kernels import set_reference_ops
from fusionseg.nets import create_model
from fusionseg.nets.ds_transunet import set_use_checkpoint

LOSS_WEIGHTS = (0.6, 0.2, 0.2)


def _params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _forward_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    return run


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum 0.9, as the original."""
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)


def _train_step_fn(
    model: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer | None = None
) -> Callable[[], object]:
    """One SGD step (``optimizer``, default :func:`_sgd`) on a BCE loss over all outputs."""
    opt = optimizer or _sgd(model)
    target = (torch.rand(x.shape[0], 1, *x.shape[2:]) > 0.5).float()

    def run() -> None:
        model.train()
        outs = model(x)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        losses = (w * F.binary_cross_entropy_with_logits(o[:, :1], target) for w, o in zip(LOSS_WEIGHTS, outs))
        loss = cast(torch.Tensor, sum(losses))  # a tensor: the model has at least one output
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def _swin_unetr() -> nn.Module | None:
    """MONAI's SwinUNETR in 2D; None when MONAI or its optional ``einops`` (used in 2D) is missing."""
    try:
        import einops  # noqa: F401
        from monai.networks.nets import SwinUNETR
    except ImportError:  # the peer is optional
        return None
    return SwinUNETR(in_channels=3, out_channels=1, feature_size=48, spatial_dims=2)


def _measure_together(fn: Callable[[], object], repeats: int, warmup: int) -> dict[str, float]:
    """Time and peak memory from the same runs (for steps of minutes; adds ~0.3 s of gc/trim per run)."""
    peaks: list[float] = []

    def run() -> None:
        peaks.append(peak_memory_mb(fn))

    seconds = time_call(run, repeats=repeats, warmup=warmup)
    return {"time_s": seconds, "peak_mb": max(peaks[warmup:])}


def table_models(args: argparse.Namespace) -> str:
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    builders: list[tuple[str, Callable[[], nn.Module | None]]] = []
    if not args.quick:
        builders.append(("ds_transunet (official)", lambda: create_model("ds_transunet")))
    builders.append(("ds_transunet_small", lambda: create_model("ds_transunet_small")))
    if not args.no_peers:
        builders.append(("MONAI SwinUNETR 2D (fs 48)", _swin_unetr))
    rows: list[list[object]] = []
    for name, build in builders:
        torch.manual_seed(0)
        model = build()
        if model is None:
            rows.append([name, "n/a", "needs monai + einops", "", "", ""])
            continue
        fwd = measure(_forward_fn(model, x), args.repeats, args.warmup)
        step = measure(_train_step_fn(model, x), args.repeats, args.warmup)
        rows.append([name, _params_m(model), fwd["time_s"], fwd["peak_mb"], step["time_s"], step["peak_mb"]])
        print(f"  measured {name}", file=sys.stderr, flush=True)
        del model
        gc.collect()
    header = ["model", "params (M)", "forward (s)", "forward peak (MiB)", "train step (s)", "train peak (MiB)"]
    title = f"input {args.batch_size}×3×{args.size}², fp32, repeats {args.repeats}, warmup {args.warmup}"
    return title + "\n\n" + format_table(header, rows)


def table_attention(args: argparse.Namespace) -> str:
    name = "ds_transunet_small" if args.quick else "ds_transunet"
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(args.big_batch_size, 3, args.big_size, args.big_size)
    optimizer = _sgd(model)
    step = _train_step_fn(model, x, optimizer)
    # Prime once at 64²: optimizer state and first-call allocations stay out of every row's numbers.
    _train_step_fn(model, torch.randn(1, 3, 64, 64), optimizer)()
    variants = [  # (label, reference_ops, use_checkpoint)
        ("explicit attention matrices (original)", True, False),
        ("SDPA (fusionseg)", False, False),
        ("SDPA + use_checkpoint=True", False, True),
    ]
    results = []
    for label, reference, ckpt in variants:
        set_reference_ops(model, reference)
        set_use_checkpoint(model, ckpt)
        gc.collect()
        results.append((label, _measure_together(step, args.big_repeats, args.big_warmup)))
        print(f"  measured {label}: {results[-1][1]}", file=sys.stderr, flush=True)
    base = results[0][1]
    rows = [
        [label, r["time_s"], base["time_s"] / r["time_s"], r["peak_mb"], r["peak_mb"] / base["peak_mb"]]
        for label, r in results
    ]
    header = ["training step", "time (s)", "speed-up vs explicit", "peak (MiB)", "memory vs explicit"]
    title = (
        f"{name} training step, input {args.big_batch_size}×3×{args.big_size}², fp32, "
        f"repeats {args.big_repeats}, warmup {args.big_warmup}"
    )
    return title + "\n\n" + format_table(header, rows)


def build_parser(prog: str = "fusionseg bench ds-transunet") -> argparse.ArgumentParser:
    """The options of ``fusionseg bench ds-transunet``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64² / 128², small preset only, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row of the model table (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--size", type=int, default=256, help="input side of the model table (multiple of 64)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch of the model table")
    parser.add_argument("--big-size", type=int, default=512, help="input side of the attention table")
    parser.add_argument("--big-batch-size", type=int, default=2, help="batch of the attention table")
    parser.add_argument("--big-repeats", type=int, default=1, help="timed runs per row of the attention table")
    parser.add_argument("--big-warmup", type=int, default=0, help="untimed steps per attention row")
    parser.add_argument("--skip-models", action="store_true", help="only the attention table")
    parser.add_argument("--skip-attention", action="store_true", help="only the model table")
    parser.add_argument("--no-peers", action="store_true", help="leave out MONAI SwinUNETR")
    parser.add_argument("--threads", default="auto", help="CPU threads: auto (idle cores, default) or a number")
    return parser


def main(argv: list[str] | None = None, prog: str = "fusionseg bench ds-transunet") -> int:
    from fusionseg.runtime.devices import set_threads

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    threads, reason = set_threads(args.threads)
    if args.quick:
        args.size, args.big_size, args.big_batch_size = 64, 128, 1
        args.repeats = args.big_repeats = 1
        args.warmup = min(args.warmup, 1)
        args.big_warmup = 0
    for side in (args.size, args.big_size):
        if side % 64 or side < 64:
            parser.error(f"sizes must be multiples of 64 (DS-TransUNet size_multiple), got {side}")
    if (
        min(args.repeats, args.big_repeats, args.batch_size, args.big_batch_size) < 1
        or min(args.warmup, args.big_warmup) < 0
    ):
        parser.error("--repeats, --big-repeats and batches must be >= 1, warmups >= 0")
    print(
        f"# fusionseg bench ds-transunet — torch {torch.__version__}, {threads} threads ({reason}), "
        f"{platform.processor() or platform.machine()}, command: {' '.join([prog, *(argv or [])])}"
    )
    # The long 512² comparison runs first so that its numbers are out early.
    if not args.skip_attention:
        print("\n" + table_attention(args) + "\n", flush=True)
    if not args.skip_models:
        print("\n" + table_models(args) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
