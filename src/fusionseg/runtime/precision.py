"""``--amp`` only where it is faster: a measured choice of mixed precision per machine, model and patch.

Reduced precision is not faster for every model on every processor. oneDNN's bfloat16 kernels win
for dense convolutions and matmuls on CPUs with AVX-512 BF16 / AMX, but depth-wise large-kernel
convolutions (D-Net's DLK blocks) can run slower in bf16 than in float32, and a training step
with them may lose overall. So when :func:`fusionseg.runtime.devices.amp_dtype` offers a reduced
dtype, :func:`choose_amp` times one step of the model at the real batch/patch shape in float32 and
in that dtype (after one warm-up each), keeps the reduced dtype only when it is at least
``1 / AMP_MARGIN`` faster, logs the figures and the choice, and caches them per CPU, torch
version, model, shape and mode (``train``: forward + backward; ``infer``: forward), so later runs
decide without timing. Where ``amp_dtype`` already falls back to float32 (CPUs without native
bf16) nothing is timed.

The timing leaves the model as it found it: parameters, buffers (e.g. batch-norm statistics),
gradients and the global random state are restored.

Example:
    >>> dtype = choose_amp(model, (2, 1, 64, 64, 64), "cpu", requested=True, mode="train")
    --amp: float32 kept for train steps: bfloat16 1.21 s vs float32 0.95 s (measured now)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fusionseg.files import write_text_atomic
from fusionseg.runtime.devices import autocast, resolve_amp

if TYPE_CHECKING:
    from fusionseg.data.preprocessing import AnyPreprocessing

__all__ = ["AMP_MARGIN", "amp_pays", "choose_amp", "choose_inference_amp", "precision_cache_path", "time_step"]

# The reduced dtype is kept when its step takes at most this fraction of the float32 step.
AMP_MARGIN = 0.95
_MODES = ("train", "infer")


def amp_pays(fp32_s: float, amp_s: float, margin: float = AMP_MARGIN) -> bool:
    """Whether a step of ``amp_s`` seconds is worth taking over ``fp32_s`` (``amp_s ≤ margin · fp32_s``)."""
    return amp_s <= margin * fp32_s


def precision_cache_path() -> Path:
    """Where measured choices are kept: ``$FUSIONSEG_PRECISION_CACHE``, else
    ``$XDG_CACHE_HOME/fusionseg/precision.json`` (``~/.cache`` without XDG_CACHE_HOME)."""
    explicit = os.environ.get("FUSIONSEG_PRECISION_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "fusionseg" / "precision.json"


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_key(model: nn.Module, shape: Sequence[int], device: torch.device, dtype: torch.dtype, mode: str) -> str:
    config = getattr(model, "config", None) or {"class": type(model).__qualname__}
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{_processor()} ×{torch.get_num_threads()} threads"
    text = json.dumps([where, torch.__version__, config, list(shape), str(dtype), mode], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    model: nn.Module, shape: Sequence[int], device: torch.device, dtype: torch.dtype | None, mode: str, repeats: int = 1
) -> float:
    """Seconds of one step of ``model`` on a random (B, C, *S) input ``shape`` (best of ``repeats``, after a warm-up).

    ``train``: forward and backward of the mean of the outputs; ``infer``: forward under ``inference_mode``.
    """
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    layout = next((p for p in model.parameters() if p.dim() == x.dim()), None)
    if layout is not None and layout.is_contiguous(memory_format=_channels_last(x.dim())):
        x = x.contiguous(memory_format=_channels_last(x.dim()))

    def step() -> None:
        if mode == "infer":
            with torch.inference_mode(), autocast(device, dtype):
                model(x)
            return
        with autocast(device, dtype):
            out = model(x)
        outs = out if isinstance(out, list | tuple) else (out,)
        sum(o.float().mean() for o in outs).backward()

    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        step()
        _sync(device)
        if i:  # the first call builds kernels and buffers
            best = min(best, time.perf_counter() - start)
    return best


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def _measure(model: nn.Module, shape: Sequence[int], device: torch.device, dtype: torch.dtype, mode: str, timer):
    """(fp32 s, reduced s) with the model's state, gradients, mode and the random state restored."""
    was_training = model.training
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    try:
        model.train(mode == "train")
        return timer(model, shape, device, None, mode), timer(model, shape, device, dtype, mode)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, value in model.named_buffers():
                value.copy_(buffers[name])
        for name, p in model.named_parameters():
            p.grad = grads[name]
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _valid_timings(entry: object) -> tuple[float, float] | None:
    """(fp32_s, amp_s) of a cache entry when both are finite positive numbers, else None (measured again)."""
    if not isinstance(entry, dict):
        return None
    try:
        values = float(entry["fp32_s"]), float(entry["amp_s"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return values if all(math.isfinite(v) and v > 0 for v in values) else None


def choose_amp(
    model: nn.Module,
    shape: Sequence[int],
    device: torch.device | str,
    requested: bool,
    mode: str = "train",
    *,
    log: Callable[[str], None] = print,
    cache: Path | bool | None = True,
    timer: Callable[..., float] | None = None,
) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (``requested``) on ``device`` for ``model`` at ``shape``, or None (float32).

    Args:
        model: the network, already on ``device`` (its ``config`` identifies it in the cache).
        shape: the input of one step, (B, C, *S): the training batch of patches, or the sliding-window batch.
        mode: ``"train"`` (forward + backward) or ``"infer"`` (forward).
        cache: True for :func:`precision_cache_path`, a path, or False/None to always measure.
        timer: :func:`time_step`-like function (default :func:`time_step`; tests inject figures).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    device = torch.device(device)
    candidate = resolve_amp(device, requested, log)
    if candidate is None:
        return None
    path = precision_cache_path() if cache is True else (Path(cache) if cache else None)
    key = _cache_key(model, shape, device, candidate, mode)
    cached = _read_cache(path) if path is not None else {}
    timings = _valid_timings(cached.get(key))
    if key in cached and timings is None:
        log(f"note: ignoring a malformed entry for this model in {path}; measuring again")
    if timings is not None:
        (fp32_s, amp_s), source = timings, f"cached in {path}"
    else:
        fp32_s, amp_s = _measure(model, shape, device, candidate, mode, timer or time_step)
        source = "measured now"
        if path is not None:
            entries = _read_cache(path)
            entries[key] = {"fp32_s": fp32_s, "amp_s": amp_s, "shape": list(shape), "mode": mode}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(entries, indent=1))
            except OSError:
                pass  # a read-only cache only costs the timing next time
    name = str(candidate).removeprefix("torch.")
    if amp_pays(fp32_s, amp_s):
        log(f"--amp: {name} for {mode} steps: {amp_s:.3g} s vs {fp32_s:.3g} s in float32 ({source})")
        return candidate
    log(f"--amp: float32 kept for {mode} steps: {name} {amp_s:.3g} s vs float32 {fp32_s:.3g} s ({source})")
    return None


def choose_inference_amp(
    model: nn.Module,
    pre: AnyPreprocessing,
    device: torch.device | str,
    requested: bool,
    sw_batch_size: int = 4,
    **kwargs,
) -> torch.dtype | None:
    """:func:`choose_amp` for sliding-window inference with the training window of ``pre`` → the autocast dtype
    of the windows, or None (float32).

    Without a training patch size (whole-image windows) the size is unknown in advance: the rule of
    :func:`~fusionseg.runtime.devices.amp_dtype` applies untimed.
    """
    patch = pre.patch_size
    if not patch:
        return resolve_amp(device, requested, kwargs.get("log", print))
    multiple = int(getattr(model, "size_multiple", 1))
    window = [-(-int(p) // multiple) * multiple for p in patch]
    shape = (sw_batch_size, pre.in_channels, *window)
    return choose_amp(model, shape, device, requested, "infer", **kwargs)
