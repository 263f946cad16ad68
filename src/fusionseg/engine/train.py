"""Training loop and ``fusionseg train``.

Dice + cross-entropy with deep-supervision weights halving per scale (normalised to sum 1), SGD
(Nesterov, poly LR) or AdamW (poly LR), optional AMP, patch-based training on a cached MONAI
dataset, sliding-window validation Dice every N epochs, atomic ``best.pt`` / ``last.pt``, a CSV
log and a learning-curve PNG.

Reproducibility: every epoch reseeds all random generators (model-side torch RNG, case order,
augmentation) from ``(seed, epoch, rank)``, and ``last.pt`` is written at epoch boundaries with
the model, optimizer, scheduler, scaler, counters and history. A run killed at any moment and
continued with ``--resume`` therefore ends with exactly the weights of an uninterrupted run with
the same seed (bit-identical on CPU).

Example:
    >>> best = train(TrainConfig(data=Path("phantoms"), model="unet", fusion="dff", epochs=2, iters_per_epoch=5))
    >>> best.name
    'best.pt'
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionseg.engine.checkpoint import build_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from fusionseg.engine.io_safety import parse_json_object
from fusionseg.errors import FusionSegError, InputError

__all__ = [
    "DeepSupervisedDiceCE",
    "TrainConfig",
    "auto_threads",
    "build_model",
    "build_optimizer",
    "deep_supervision_weights",
    "main",
    "poly_lr_lambda",
    "seed_everything",
    "set_threads",
    "split_cases",
    "train",
]

CSV_FIELDS = ("epoch", "step", "train_loss", "val_dice", "lr", "train_time_s", "epoch_time_s")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved into every checkpoint as ``train_args``)."""

    data: Path
    output: Path = Path("runs/fusionseg")
    model: str = "unet"
    fusion: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    deep_supervision: bool | None = None  # None: the model's own default
    epochs: int = 50
    iters_per_epoch: int = 50
    time_budget: float | None = None  # seconds of training (validation and checkpoint writes excluded)
    stop_after: int | None = None  # epochs to run in this invocation, then exit (continue with resume)
    batch_size: int = 2
    patch_size: tuple[int, ...] | None = None
    target_spacing: tuple[float, ...] | None = None
    optimizer: str = "sgd"
    lr: float | None = None  # default 1e-2 (sgd) / 1e-3 (adamw)
    weight_decay: float | None = None  # default 3e-5 (sgd) / 1e-2 (adamw)
    momentum: float = 0.99
    grad_clip: float | None = 12.0
    amp: bool = False
    channels_last: bool = False
    augment: bool = True
    val_every: int = 1
    val_fraction: float = 0.2
    val_overlap: float = 0.25
    seed: int = 0
    resume: bool = False
    init: Path | None = None  # initial weights (fusionseg checkpoint or state_dict), loaded where names/shapes fit
    num_workers: int = 0
    cache_rate: float = 1.0
    device: str = "auto"
    threads: str | int | None = None  # CPU intra-op threads: None = torch default, "auto" = idle cores
    progress: bool = True

    def plain(self) -> dict[str, Any]:
        """JSON-able copy (paths → str, tuples → lists)."""

        def conv(v):
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, tuple | list):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return {k: conv(v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------- loss


def deep_supervision_weights(levels: int) -> list[float]:
    """Weights 1, 1/2, 1/4, ... normalised to sum 1 (full resolution first)."""
    raw = [0.5**i for i in range(levels)]
    total = sum(raw)
    return [w / total for w in raw]


class DeepSupervisedDiceCE(nn.Module):
    """MONAI ``DiceCELoss`` (softmax, one-hot target, batch Dice) over one or several outputs.

    A tuple of logits (full resolution first) gets :func:`deep_supervision_weights`; the target is
    resized to each output with nearest-exact interpolation (MONAI ``DeepSupervisionLoss``).

    Example:
        >>> loss = DeepSupervisedDiceCE()
        >>> loss((torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)), torch.randint(0, 3, (2, 1, 8, 8))).ndim
        0
    """

    def __init__(self, include_background: bool = False) -> None:
        super().__init__()
        from monai.losses import DeepSupervisionLoss, DiceCELoss

        dice_ce = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=True)
        self.loss = DeepSupervisionLoss(dice_ce, weight_mode="exp")

    def forward(self, outputs: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, list | tuple):
            self.loss.weights = deep_supervision_weights(len(outputs))
            outputs = list(outputs)
        return self.loss(outputs, target.float())


# -------------------------------------------------------------------------------------- optimisers


def poly_lr_lambda(total_steps: int, exponent: float = 0.9, time_fraction=None):
    """LR factor ``(1 - progress)^exponent`` (nnU-Net poly schedule), ``progress = step / total_steps``.

    With a time budget, ``time_fraction()`` (training time used / budget) counts too: the LR then
    reaches 0 at the budget or at the last step, whichever comes first.
    """

    def factor(step: int) -> float:
        progress = step / max(total_steps, 1)
        if time_fraction is not None:
            progress = max(progress, time_fraction())
        return max(1.0 - progress, 0.0) ** exponent

    return factor


def build_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov, momentum 0.99, lr 1e-2, wd 3e-5) or AdamW (lr 1e-3, wd 1e-2), overridable."""
    name = config.optimizer.lower()
    if name == "sgd":
        lr = 1e-2 if config.lr is None else config.lr
        wd = 3e-5 if config.weight_decay is None else config.weight_decay
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.momentum > 0, weight_decay=wd)
    if name == "adamw":
        lr = 1e-3 if config.lr is None else config.lr
        wd = 1e-2 if config.weight_decay is None else config.weight_decay
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise InputError(f"unknown optimizer {config.optimizer!r}; choose sgd or adamw")


# ------------------------------------------------------------------------------------- randomness


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def auto_threads() -> int:
    """Intra-op threads for this machine now: its idle cores (cores − 1-minute load average), at least 1.

    On a busy shared machine, more threads than idle cores make OpenMP spin and run many times slower.
    """
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, round(cores - load)))


def set_threads(spec: str | int | None) -> int:
    """Apply ``--threads`` (None: leave torch's default, "auto": :func:`auto_threads`, or a count) → threads in use."""
    if spec is None:
        return torch.get_num_threads()
    if str(spec) == "auto":
        threads = auto_threads()
    else:
        try:
            threads = int(spec)
        except ValueError:
            raise InputError(f"--threads must be 'auto' or a positive integer, got {spec!r}") from None
        if threads < 1:
            raise InputError(f"--threads must be ≥ 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**31


def split_cases(cases: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, val) split; no validation below 2 cases or with ``val_fraction`` 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    num_val = 0 if len(cases) < 2 or val_fraction == 0 else max(1, round(val_fraction * len(cases)))
    val = sorted(order[:num_val])
    train_ids = sorted(order[num_val:])
    return [cases[i] for i in train_ids], [cases[i] for i in val]


def _epoch_indices(num_items: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` case indices: concatenated random permutations (every case equally often)."""
    chunks, total = [], 0
    while total < count:
        chunks.append(torch.randperm(num_items, generator=generator))
        total += num_items
    return torch.cat(chunks)[:count].tolist()


# ------------------------------------------------------------------------------------------ model


def build_model(config: TrainConfig, pre: dict) -> tuple[nn.Module, dict]:
    """Create the registered model for the data described by ``pre`` → (model, config dict)."""
    from fusionseg.nets.registry import create_model, list_models

    kwargs: dict[str, Any] = {
        "in_channels": int(pre["in_channels"]),
        "out_channels": int(pre["num_classes"]),
        "spatial_dims": int(pre["spatial_dims"]),
    }
    if config.deep_supervision is not None:
        kwargs["deep_supervision"] = bool(config.deep_supervision)
    if config.fusion is not None:
        kwargs["fusion"] = config.fusion
    kwargs.update(config.model_kwargs)
    if config.model.lower() not in list_models():
        raise InputError(f"unknown model {config.model!r}; choose one of {', '.join(list_models())}")
    try:
        model = create_model(config.model, **kwargs)
    except TypeError as err:
        hint = " (--fusion is a `unet` option)" if config.fusion is not None and "fusion" in str(err) else ""
        raise InputError(f"model {config.model!r} rejected its arguments: {err}{hint}") from None
    except ValueError as err:
        raise InputError(f"model {config.model!r}: {err}") from None
    model_cfg = getattr(model, "config", None) or {"name": config.model.lower(), "kwargs": kwargs}
    return model, {"name": model_cfg["name"], "kwargs": dict(model_cfg.get("kwargs", kwargs))}


def _fit_patch_size(pre: dict, multiple: int, log) -> None:
    from fusionseg.engine.infer import round_up

    patch = pre.get("patch_size")
    if not patch:
        raise InputError("the preprocessing has no patch size; pass --patch-size (e.g. 96,96 or 64,64,64)")
    fitted = [round_up(int(p), multiple) for p in patch]
    if fitted != list(patch):
        log(f"patch size {tuple(patch)} rounded up to {tuple(fitted)} (multiples of size_multiple={multiple})")
    pre["patch_size"] = fitted


# ------------------------------------------------------------------------------------------ helpers


def _dist_setup(device: str):
    """``engine.distributed.init_distributed`` (contract 5), or a single-process stand-in."""
    try:
        from fusionseg.engine import distributed
    except ImportError:
        distributed = None
    if distributed is not None and hasattr(distributed, "init_distributed"):
        return distributed, distributed.init_distributed(device)
    from types import SimpleNamespace

    from fusionseg.engine.infer import pick_device

    return None, SimpleNamespace(
        rank=0, world_size=1, local_rank=0, device=pick_device(device), is_main=True, enabled=False
    )


def _to_tensor(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _cpu_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def write_csv(history: list[dict], path: Path) -> None:
    """Rewrite the CSV log from the history (so a resumed run's log has no duplicated epochs)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    tmp.replace(path)


@torch.no_grad()
def case_dice(
    model: nn.Module, items: list[dict], pre: dict, device: torch.device, overlap: float = 0.25, amp: bool = False
) -> list[float]:
    """Mean foreground Dice of each item (sliding window on preprocessed ``{"image", "label"}`` items)."""
    from fusionseg.engine.evaluate import dice_iou
    from fusionseg.engine.infer import predict_volume

    scores = []
    num_classes = int(pre["num_classes"])
    for item in items:
        image, label = _to_tensor(item["image"]), _to_tensor(item["label"])[0].long()
        pred = predict_volume(model, image, pre, overlap=overlap, device=device, amp=amp).argmax(0)
        per_class = [dice_iou((pred == c).numpy(), (label == c).numpy())[0] for c in range(1, num_classes)]
        scores.append(float(np.mean(per_class)))
    return scores


def validation_dice(
    model: nn.Module, items: list[dict], pre: dict, device: torch.device, overlap: float = 0.25, amp: bool = False
) -> float:
    """Mean foreground Dice over cases and classes."""
    scores = case_dice(model, items, pre, device, overlap, amp)
    return float(np.mean(scores)) if scores else math.nan


# -------------------------------------------------------------------------------------------- train


def train(config: TrainConfig) -> Path:
    """Train a model; returns the path of ``best.pt`` in ``config.output``.

    ``best.pt`` is the epoch with the highest validation Dice (the last epoch when there is no
    validation split); ``last.pt`` holds the full training state for ``resume``.
    """
    from fusionseg import data

    _check_config(config)
    set_threads(config.threads)
    distributed, info = _dist_setup(config.device)
    device = info.device
    is_main = bool(info.is_main)
    log = print if is_main else (lambda *a, **k: None)
    output = Path(config.output)
    try:
        seed_everything(config.seed)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

        ds_info = data.scan_dataset(config.data)
        if not ds_info.cases:
            raise InputError(f"{config.data} has no training cases")
        pre = data.build_preprocessing(
            ds_info,
            target_spacing=list(config.target_spacing) if config.target_spacing else None,
            patch_size=list(config.patch_size) if config.patch_size else None,
        )
        model, model_cfg = build_model(config, pre)
        _fit_patch_size(pre, int(getattr(model, "size_multiple", 1) or 1), log)
        train_cases, val_cases = split_cases(list(ds_info.cases), config.val_fraction, config.seed)

        from monai.data import CacheDataset, DataLoader

        train_ds = CacheDataset(
            [data.case_dict(c) for c in train_cases],
            data.train_transforms(pre, augment=config.augment),
            cache_rate=config.cache_rate,
            num_workers=0,
            progress=False,
        )
        val_items = (
            list(CacheDataset([data.case_dict(c) for c in val_cases], data.eval_transforms(pre), progress=False))
            if val_cases
            else []
        )

        if config.init is not None and not config.resume:
            from fusionseg.nets.weights import load_pretrained

            report = load_pretrained(model, config.init, strict=False)
            log(
                f"initialised {len(report.loaded)} tensors from {config.init}"
                + ("" if report.ok else f"; {report.problems()}")
            )
        model = model.to(device)
        if config.channels_last:
            from fusionseg.layers import channels_last_format

            model = model.to(memory_format=channels_last_format(int(pre["spatial_dims"]) + 2))
        net = distributed.wrap_model(model, info) if distributed is not None else model
        loss_fn = DeepSupervisedDiceCE()
        optimizer = build_optimizer(model.parameters(), config)
        total_steps = config.epochs * config.iters_per_epoch
        state = {"epoch": 0, "step": 0, "best_metric": -math.inf, "train_time": 0.0, "history": []}
        budget_used = (lambda: state["train_time"] / config.time_budget) if config.time_budget else None
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(total_steps, time_fraction=budget_used))
        if config.amp and device.type == "cpu" and not _cpu_bf16_supported():
            log("note: --amp ignored: this CPU has no native bfloat16 support; training in float32")
            config = replace(config, amp=False)
        use_scaler = config.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

        last_path, best_path = output / "last.pt", output / "best.pt"
        if config.resume:
            state.update(_restore(last_path, model, optimizer, scheduler, scaler, model_cfg, config, log))
        elif is_main and last_path.exists():
            log(f"note: {output} already holds a run; it will be overwritten (use --resume to continue it)")

        log(
            f"training {model_cfg['name']} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
            f"{len(train_cases)} cases (+{len(val_cases)} validation), patch {tuple(pre['patch_size'])}, "
            f"{config.epochs} epochs × {config.iters_per_epoch} iterations, device {device}"
            + (f", {info.world_size} processes" if info.enabled else "")
        )

        def checkpoint() -> dict:
            best = state["best_metric"] if math.isfinite(state["best_metric"]) else None
            return {
                **build_checkpoint(
                    model,
                    preprocessing=pre,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    epoch=state["epoch"],
                    step=state["step"],
                    best_metric=best,
                    train_args=config.plain(),
                ),
                "train_time": float(state["train_time"]),
                "history": state["history"],
            }

        epochs_this_run = 0
        out_of_time = False
        while state["epoch"] < config.epochs and not out_of_time:
            epoch = state["epoch"]
            epoch_seed = _epoch_seed(config.seed, epoch, info.rank)
            seed_everything(epoch_seed)
            order = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch, 0))
            indices = _epoch_indices(len(train_ds), config.iters_per_epoch * config.batch_size * info.world_size, order)
            loader = DataLoader(
                train_ds,
                batch_size=config.batch_size,
                sampler=indices[info.rank :: info.world_size],
                num_workers=config.num_workers,
                generator=torch.Generator().manual_seed(epoch_seed),
            )
            net.train()
            losses = []
            epoch_start = time.perf_counter()
            bar = _progress(config, is_main, epoch)
            tick = time.perf_counter()
            for batch in loader:
                loss = _train_step(net, batch, loss_fn, optimizer, scheduler, scaler, config, device, pre)
                losses.append(loss)
                state["step"] += 1
                now = time.perf_counter()
                state["train_time"] += now - tick
                tick = now
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if config.time_budget is not None and _agree(
                    state["train_time"] >= config.time_budget, info, distributed
                ):
                    out_of_time = True
                    break
            if bar is not None:
                bar.close()
            state["epoch"] = epoch + 1
            epochs_this_run += 1
            train_loss = float(np.mean(losses)) if losses else math.nan
            if distributed is not None and info.enabled:
                train_loss = float(distributed.all_reduce_mean(train_loss, info))
            finished = state["epoch"] >= config.epochs or out_of_time
            val_dice = None
            if val_items and is_main and (state["epoch"] % config.val_every == 0 or finished):
                val_dice = validation_dice(model, val_items, pre, device, config.val_overlap, config.amp)
            row = {
                "epoch": state["epoch"],
                "step": state["step"],
                "train_loss": round(train_loss, 6),
                "val_dice": None if val_dice is None else round(val_dice, 6),
                "lr": optimizer.param_groups[0]["lr"],
                "train_time_s": round(state["train_time"], 3),
                "epoch_time_s": round(time.perf_counter() - epoch_start, 3),
            }
            state["history"].append(row)
            improved = val_dice is not None and val_dice > state["best_metric"]
            if improved:
                state["best_metric"] = val_dice
            if is_main:
                log(
                    f"epoch {state['epoch']}/{config.epochs}: loss {train_loss:.4f}"
                    + ("" if val_dice is None else f", val Dice {val_dice:.4f}" + (" (best)" if improved else ""))
                    + f", {state['train_time']:.0f} s"
                )
                ckpt = checkpoint()
                if improved or (not val_items and finished):
                    save_checkpoint(best_path, ckpt)
                save_checkpoint(last_path, {**ckpt, "finished": finished})
                write_csv(state["history"], output / "log.csv")
                _plot(state["history"], output / "learning_curve.png")
            if distributed is not None and info.enabled:
                distributed.barrier(info)
            if config.stop_after is not None and epochs_this_run >= config.stop_after and not finished:
                log(f"stopping after {epochs_this_run} epoch(s) as asked; continue with --resume")
                break
        if out_of_time:
            log(f"time budget of {config.time_budget:g} s reached after {state['step']} iterations")
        if is_main and not best_path.exists() and last_path.exists():
            save_checkpoint(best_path, checkpoint())
        if is_main:
            (output / "train_summary.json").write_text(
                json.dumps(
                    {
                        "epochs": state["epoch"],
                        "steps": state["step"],
                        "train_time_s": state["train_time"],
                        "best_val_dice": None if not math.isfinite(state["best_metric"]) else state["best_metric"],
                        "out_of_time": out_of_time,
                    },
                    indent=2,
                )
            )
        return best_path
    finally:
        if distributed is not None and info.enabled:
            distributed.cleanup(info)


def _check_config(config: TrainConfig) -> None:
    for name in ("epochs", "iters_per_epoch", "batch_size", "val_every"):
        if int(getattr(config, name)) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(config, name)}")
    if config.time_budget is not None and config.time_budget <= 0:
        raise InputError(f"--time-budget must be > 0 seconds, got {config.time_budget}")
    if config.stop_after is not None and config.stop_after < 1:
        raise InputError(f"--stop-after must be ≥ 1 epoch, got {config.stop_after}")
    if not Path(config.data).is_dir():
        raise InputError(f"--data {config.data} is not a folder; pass a dataset folder (see `fusionseg train --help`)")


def _agree(flag: bool, info, distributed) -> bool:
    """All ranks stop together: any rank out of budget stops everyone."""
    if distributed is None or not info.enabled:
        return flag
    return float(distributed.all_reduce_mean(float(flag), info)) > 0


def _progress(config: TrainConfig, is_main: bool, epoch: int):
    if not (config.progress and is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=config.iters_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, dynamic_ncols=True
    )


def _train_step(net, batch, loss_fn, optimizer, scheduler, scaler, config, device, pre) -> float:
    image = _to_tensor(batch["image"]).to(device, non_blocking=True).float()
    label = _to_tensor(batch["label"]).to(device, non_blocking=True)
    if config.channels_last:
        from fusionseg.layers import to_channels_last

        image = to_channels_last(image)
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, config.amp):
        outputs = net(image)
    loss = loss_fn(outputs, label)
    if not torch.isfinite(loss):
        raise FusionSegError(f"training loss became {loss.item()} at step {scheduler.last_epoch}; lower --lr")
    scaler.scale(loss).backward()
    if config.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach())


def _restore(path: Path, model, optimizer, scheduler, scaler, model_cfg: dict, config: TrainConfig, log) -> dict:
    if not path.exists():
        raise InputError(f"--resume: {path} does not exist; train without --resume first")
    ckpt = load_checkpoint(path)
    if (
        ckpt.get("model", {}).get("name") != model_cfg["name"]
        or ckpt.get("model", {}).get("kwargs") != model_cfg["kwargs"]
    ):
        raise InputError(
            f"--resume: {path} holds model {ckpt.get('model')}, not {model_cfg}; use the same --model/--fusion options"
        )
    saved = ckpt.get("train_args", {})
    for key in ("epochs", "iters_per_epoch", "batch_size", "seed", "optimizer"):
        if key in saved and saved[key] != getattr(config, key):
            log(f"warning: resuming with {key}={getattr(config, key)}, but the run used {saved[key]}; results differ")
    model.load_state_dict(ckpt["state_dict"], strict=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt.get("rng"))
    log(f"resuming from {path} at epoch {ckpt['epoch']} (step {ckpt['step']})")
    return {
        "epoch": int(ckpt["epoch"]),
        "step": int(ckpt["step"]),
        "best_metric": -math.inf if ckpt.get("best_metric") is None else float(ckpt["best_metric"]),
        "train_time": float(ckpt.get("train_time", 0.0)),
        "history": list(ckpt.get("history", [])),
    }


def _plot(history: list[dict], path: Path) -> None:
    from fusionseg.engine.report import plot_learning_curve

    plot_learning_curve(history, path)


# --------------------------------------------------------------------------------------------- CLI


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 96,96 or 64,64,64, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_tuple(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1.0,1.0,1.5, got {text!r}") from None


def build_parser(prog: str = "fusionseg train", ablation: bool = False) -> argparse.ArgumentParser:
    """Options of ``fusionseg train``; ``ablation=True`` leaves out those ``fusionseg ablate`` sets per run."""
    d = TrainConfig(data=Path("."))
    p = argparse.ArgumentParser(prog=prog, description="Train a segmentation model on a dataset folder.")
    p.add_argument("--data", required=True, type=Path, help="dataset folder (nnU-Net/MSD layout or images/ + masks/)")
    p.add_argument("--output", type=Path, default=d.output, help=f"run folder (default {d.output})")
    p.add_argument(
        "--model",
        default=d.model,
        help="registered model (default unet): unet, dnet, dnet_small, dnet_v1, ds_transunet, ds_transunet_small; "
        "MONAI / nnU-Net networks whose skips take --fusion: monai_basicunet, monai_dynunet, monai_swinunetr, "
        "nnunet_plain, nnunet_resenc (nnunet_* need dynamic-network-architectures)",
    )
    only_train = (lambda *a, **k: None) if ablation else p.add_argument
    only_train("--fusion", default=None, help="skip fusion of unet: concat | add | dff | tif")
    p.add_argument(
        "--model-kwargs", default="{}", help="extra model arguments as JSON, e.g. '{\"features\": [16, 32, 64]}'"
    )
    ds = p.add_mutually_exclusive_group()
    ds.add_argument("--deep-supervision", dest="deep_supervision", action="store_true", default=None)
    ds.add_argument("--no-deep-supervision", dest="deep_supervision", action="store_false")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--iters-per-epoch", type=int, default=d.iters_per_epoch, help=f"default {d.iters_per_epoch}")
    only_train("--time-budget", type=float, default=None, help="stop training after this many seconds")
    only_train(
        "--stop-after", type=int, default=None, help="run this many epochs now, then exit (continue with --resume)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"cases per iteration (default {d.batch_size})")
    p.add_argument("--patch-size", type=_int_tuple, default=None, help="training patch, e.g. 96,96 or 64,64,64")
    p.add_argument("--target-spacing", type=_float_tuple, default=None, help="resample to this spacing (mm)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer, help="sgd (poly, nnU-Net) or adamw")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-2 sgd, 1e-3 adamw)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 3e-5 sgd, 1e-2 adamw")
    p.add_argument(
        "--grad-clip", type=float, default=d.grad_clip, help=f"gradient-norm clip, 0 = off (default {d.grad_clip:g})"
    )
    p.add_argument("--amp", action="store_true", help="mixed precision: fp16 on CUDA, bf16 on CPU")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no data augmentation")
    p.add_argument(
        "--val-every", type=int, default=d.val_every, help=f"validate every N epochs (default {d.val_every})"
    )
    p.add_argument(
        "--val-fraction", type=float, default=d.val_fraction, help=f"cases held out (default {d.val_fraction})"
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    only_train("--resume", action="store_true", help="continue the run in --output from last.pt")
    only_train("--init", type=Path, default=None, help="start from these weights (e.g. from import-weights)")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="data-loading processes (default 0)")
    p.add_argument(
        "--cache-rate", type=float, default=d.cache_rate, help="fraction of cases kept in memory (default 1)"
    )
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda (default auto)")
    p.add_argument("--threads", default=None, help="CPU threads: a number, or auto = idle cores (default: torch's)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    model_kwargs = parse_json_object(args.model_kwargs, "--model-kwargs", '{"features": [16, 32]}')
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and k != "model_kwargs"}
    return TrainConfig(model_kwargs=model_kwargs, **values)


def main(argv: list[str] | None = None, prog: str = "fusionseg train") -> int:
    args = build_parser(prog).parse_args(argv)
    config = config_from_args(args)
    best = train(config)
    if os.environ.get("RANK", "0") == "0":
        print(f"best checkpoint: {best}")
    return 0
