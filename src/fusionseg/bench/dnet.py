"""D-Net speed benchmark: ``fusionseg bench dnet [--sizes 64 96] [--repeats N] [--quick]``.

Measures, in one run and on the same weights, the D-Net v2 (in 1, out 16, deep supervision)
with ``reference_ops`` — the original's op sequence and layout, the "plain" baseline — then the
fast channels-last path, and the fast path under bf16 autocast, plus MONAI's SwinUNETR
(feature_size 48) and DynUNet (nnU-Net-like) as peers: inference time, training-step time
(forward + backward + SGD step) and peak memory at batch 1, one input channel, cubic sizes.
Ratios are against the plain D-Net of the same size. Also prints parameter counts and
convolution MACs (counted with forward hooks) and the argmax voxel agreement of the bf16 and
fast outputs with the plain fp32 output. Beside each row: the share of this machine's matrix-multiply
rate in the row's precision (an fp32 and, with native bf16, a bf16 GEMM timed in the same run) that the
model's convolution MACs reach (training counted as 3× the forward MACs: forward, input and weight
gradients).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from types import EllipsisType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from fusionseg.bench.common import format_table, gemm_gflops, peak_memory_mb, time_call
from fusionseg.fusion import DFF
from fusionseg.kernels import reference_ops, set_reference_ops
from fusionseg.nets.dnet import DNet, bf16_autocast
from fusionseg.runtime.devices import NO_BF16_NOTE, amp_dtype, set_threads

__all__ = ["build_parser", "count_macs", "main"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of all convolutions, transposed convolutions and linear layers in ``model(x)``.

    Counted with forward hooks on a reference-ops forward (so every 1×1 conv, DFF's included, is a
    module call). Attention score/value matmuls and elementwise work are not counted.
    """
    total = 0

    def conv_hook(m: _ConvNd | nn.Linear, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = m.weight[0].numel()  # C_in/groups · prod(kernel) for convs
        if isinstance(m, _CONV_TS):  # weight (C_in, C_out/groups, *k): each input voxel feeds C_out·prod(k)
            total += inp[0].numel() * m.weight[0].numel()
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
        else:
            total += out.numel() * k

    handles = []
    for m in model.modules():
        if isinstance(m, (*_CONVS, *_CONV_TS, nn.Linear)):
            handles.append(m.register_forward_hook(conv_hook))
    try:
        with reference_ops(model), torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def _first(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    if out.ndim == 6:  # MONAI DynUNet stacks deep-supervision heads in training mode
        return out[:, 0]
    return out


def _loss(out, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every deep-supervision head (target subsampled to each head's grid)."""
    outs = (
        list(out)
        if isinstance(out, (tuple, list))
        else [out[:, i] for i in range(out.shape[1])]
        if out.ndim == 6
        else [out]
    )
    total: torch.Tensor | float = 0.0
    for o in outs:
        step = target.shape[-1] // o.shape[-1]
        grid: tuple[EllipsisType | slice, ...] = (..., *(slice(None, None, step),) * (target.ndim - 1))
        total = total + F.cross_entropy(o.float(), target[grid])
    assert isinstance(total, torch.Tensor)  # a model has at least one head
    return total


def _train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.99, nesterov=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with bf16_autocast("cpu", enabled=bf16):
            out = model(x)
        _loss(out, target).backward()
        opt.step()

    return step


def _infer(model: nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.inference_mode(), bf16_autocast("cpu", enabled=bf16):
            return _first(model(x))

    return run


def _with_layout(model: nn.Module, fast: bool | None, train: bool, fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` with D-Net's fast or reference ops (``fast``; None for peers) and train/eval mode set first."""

    def run() -> None:
        if fast is not None:
            set_reference_ops(model, not fast)
            for m in model.modules():  # the plain baseline times D-Net's own ops: DFF stays fused in both
                if isinstance(m, DFF):
                    m.reference_ops = False
        model.train(train)
        fn()

    return run


def _peers(out_channels: int, size: int) -> dict[str, Callable[[], nn.Module]]:
    try:
        from monai.networks.nets import DynUNet, SwinUNETR
    except ImportError:  # pragma: no cover - MONAI is a dependency, but keep the bench usable without it
        return {}

    def swin() -> nn.Module:
        try:
            return SwinUNETR(in_channels=1, out_channels=out_channels, feature_size=48, spatial_dims=3)
        except TypeError:  # older MONAI needs img_size
            return SwinUNETR(  # type: ignore[call-arg, unused-ignore]  # img_size: gone from newer MONAI, needed by 1.4
                img_size=(size,) * 3, in_channels=1, out_channels=out_channels, feature_size=48
            )

    def dyn() -> nn.Module:  # nnU-Net 3d_fullres-like: 32…320 filters, downsample to ≥ 4³, deep supervision
        n = max(d for d in range(1, 6) if size // 2**d >= 4)
        kernels = [[3, 3, 3]] * (n + 1)
        strides = [[1, 1, 1]] + [[2, 2, 2]] * n
        return DynUNet(
            3, 1, out_channels, kernels, strides, strides[1:], filters=[32, 64, 128, 256, 320, 320][: n + 1],
            norm_name="instance", deep_supervision=True, deep_supr_num=min(3, n - 1), res_block=False,
        )  # fmt: skip

    return {"SwinUNETR fs48 (MONAI)": swin, "DynUNet nnU-Net-like (MONAI)": dyn}


def build_parser(prog: str = "fusionseg bench dnet") -> argparse.ArgumentParser:
    """The options of ``fusionseg bench dnet``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="cubic input sizes (multiples of 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="one size (64), one repeat, no MONAI peers")
    parser.add_argument("--no-peers", action="store_true", help="skip SwinUNETR and DynUNet")
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--out-channels", type=int, default=16)
    parser.add_argument("--threads", default="auto", help="CPU threads: auto (idle cores, default) or a number")
    return parser


def main(argv: list[str] | None = None, prog: str = "fusionseg bench dnet") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.no_peers = args.sizes[:1], 1, True
    if any(s % 32 for s in args.sizes):
        parser.error(f"sizes must be multiples of 32, got {args.sizes}")
    threads, reason = set_threads(args.threads)
    torch.manual_seed(0)
    k = args.out_channels

    dnet = DNet(1, k).eval()
    with torch.no_grad():  # give the residual branches real weight (official init γ = 1e-6 makes them ~identity)
        for name, p in dnet.named_parameters():
            if name.endswith("layer_scale"):
                p.fill_(0.1)
    print(f"torch {torch.__version__}, {threads} threads ({reason}); D-Net v2 in 1, out {k}, deep supervision")

    # bf16 only where this CPU computes it natively (fusionseg.runtime.devices's rule for --amp): elsewhere it
    # is emulated, many times slower than fp32, and a timing of the emulation would mislead.
    bf16_native = amp_dtype("cpu", amp=True) == torch.bfloat16
    if not bf16_native:
        print(f"bf16 rows: not supported on this CPU ({NO_BF16_NOTE.split(': ', 1)[1]})")
    peak = {False: gemm_gflops(torch.float32)}
    if bf16_native:
        peak[True] = gemm_gflops(torch.bfloat16)
    print(
        "matrix-multiply rate measured now (2048² GEMM): "
        + ", ".join(f"{'bf16' if k else 'fp32'} {v:.0f} GFLOP/s" for k, v in peak.items())
    )
    rows, agree_rows = [], []
    for size in args.sizes:
        x = torch.randn(1, 1, size, size, size)
        target = torch.randint(0, k, (1, size, size, size))
        macs = count_macs(dnet, x) / 1e9
        variants: list[tuple[str, Callable[[], nn.Module], bool | None, bool]] = [
            ("D-Net v2 plain (original layout)", lambda: dnet, False, False),
            ("D-Net v2 fast (channels-last)", lambda: dnet, True, False),
        ]
        if bf16_native:
            variants.append(("D-Net v2 fast + bf16 autocast", lambda: dnet, True, True))
        if not args.no_peers:
            variants += [(name, make, None, False) for name, make in _peers(k, size).items()]

        # Accuracy of the fast and bf16 paths against plain fp32 (same weights, same input).
        with reference_ops(dnet):
            ref = _infer(dnet, x, False)().argmax(1)
        fast_out = _infer(dnet, x, False)().argmax(1)
        bf16_agree = "not supported on this CPU"
        if bf16_native:
            bf16_agree = f"{(_infer(dnet, x, True)().argmax(1) == ref).float().mean().item():.4%}"
        agree_rows.append([size, f"{(fast_out == ref).float().mean().item():.4%}", bf16_agree])

        # Build every variant, warm it up, then time them interleaved (round-robin, median of
        # ``repeats`` rounds) so that load from other processes hits all variants alike.
        runs: list[dict[str, Any]] = []
        for name, make, fast, bf16 in variants:
            model = make()
            model_macs = macs if fast is not None else count_macs(model.eval(), x) / 1e9
            infer = _with_layout(model, fast, False, _infer(model, x, bf16))
            train = None if args.no_train else _with_layout(model, fast, True, _train_step(model, x, target, bf16))
            runs.append(
                {"name": name, "model": model, "macs": model_macs, "infer": infer, "train": train, "peak": peak[bf16]}
            )
        for kind in ("infer", "train"):
            for run in runs:
                if run[kind] is not None:
                    run[kind]()  # warm-up (oneDNN primitive creation, allocator)
            for run in runs:
                run[kind + "_times"] = []
            for _ in range(args.repeats):
                for run in runs:
                    if run[kind] is not None:
                        run[kind + "_times"].append(time_call(run[kind], repeats=1, warmup=0))
            for run in runs:
                run[kind + "_s"] = statistics.median(run[kind + "_times"]) if run[kind + "_times"] else float("nan")
                run[kind + "_mb"] = peak_memory_mb(run[kind]) if run[kind] is not None else float("nan")
        base = runs[0]
        size_rows = []
        for run in runs:
            params = sum(p.numel() for p in run["model"].parameters())
            size_rows.append(
                [
                    f"{size}³", run["name"], f"{params / 1e6:.2f} M", f"{run['macs']:.1f}",
                    run["infer_s"], f"{base['infer_s'] / run['infer_s']:.2f}×", run["infer_mb"],
                    run["train_s"], f"{base['train_s'] / run['train_s']:.2f}×", run["train_mb"],
                    _share(run["macs"], run["infer_s"], run["peak"]),
                    _share(3 * run["macs"], run["train_s"], run["peak"]),
                ]
            )  # fmt: skip
            print(format_table(_HEADER, size_rows[-1:]).splitlines()[-1], flush=True)
        if not bf16_native:  # the bf16 row stays in the table, after the fast row, without a timing
            na = "not supported on this CPU"
            size_rows.insert(
                2,
                [f"{size}³", "D-Net v2 fast + bf16 autocast", *size_rows[1][2:4], na, "–", "–", na, "–", "–", "–", "–"],
            )
        rows += size_rows
        del runs
    print()
    print(format_table(_HEADER, rows))
    print()
    print("argmax voxel agreement with plain fp32 (deep-supervision head 0, random weights, γ = 0.1):")
    print(format_table(["size", "fast fp32", "fast bf16"], agree_rows))
    return 0


_HEADER = [
    "size", "model", "params", "GMACs", "infer s", "infer speed-up", "infer peak MiB",
    "train step s", "train speed-up", "train peak MiB", "infer % of GEMM rate", "train % of GEMM rate",
]  # fmt: skip


def _share(gmacs: float, seconds: float, peak_gflops: float) -> str:
    """Share of the GEMM rate reached by ``gmacs`` multiply-accumulates in ``seconds``."""
    if math.isnan(seconds) or seconds <= 0:  # not measured
        return "–"
    return f"{2 * gmacs / seconds / peak_gflops:.1%}"
