"""The training loop: a :class:`Trainer` built from small overridable hooks, and :func:`train`.

One iteration trains on ``config.batch_size`` patches: the loss of the dataset's labels
(:func:`~fusionseg.training.losses.loss_for_labels`: softmax Dice + cross-entropy, sigmoid Dice + BCE
per region, ignore label left out; deep-supervision weights halving per scale), SGD (Nesterov,
poly LR) or AdamW, optional mixed precision (:mod:`fusionseg.runtime.devices`), patches streamed from
the preprocessed cache (:mod:`fusionseg.data.streaming`; the plan is saved as ``plans.json``),
sliding-window validation Dice (per class / region) every ``val_every`` epochs,
atomic ``best.pt`` / ``last.pt``, ``log.csv``, a learning curve (the training loss every few
iterations, ``CURVE_POINTS_PER_EPOCH`` points per epoch, so a short run draws a curve) and TensorBoard scalars.

Validation: at most ``VAL_CASES_PER_EPOCH`` cases (the first of the validation list, read one at a
time from the cache) after each epoch, every validation case after the last one. Validation cases:
a seeded ``val_fraction`` hold-out, or fold ``config.fold`` of nnU-Net's ``splits_final.json``
(:func:`fusionseg.data.get_fold`; ``"all"`` trains and validates on every case).

Time budget (``config.time_budget``): the wall clock of the whole run — setup, training,
validation and checkpoint writes (summed over resumed invocations). Training stops when the next
iteration would not leave room for the closing validation and checkpoint (their last measured
cost, at most ``BUDGET_VALIDATION_SHARE`` of the budget); a validation that would still overrun
scores only the cases that fit, or none, and the log says so. The LR schedule ends at the budget.

Reproducibility: every epoch reseeds all random generators (model-side torch RNG, case order,
augmentation) from ``(seed, epoch, rank)``, and ``last.pt`` (then ``best.pt``) is written at epoch
boundaries with the model, optimizer, scheduler, scaler, counters and history. A run killed at any
moment and continued with ``resume`` (from ``last.pt``, else ``best.pt``; afresh when there is neither)
ends with exactly the weights of an uninterrupted run with the same seed (bit-identical on CPU).

Customise a run by overriding hooks (as nnU-Net's trainers do)::

    class MyTrainer(Trainer):
        def build_loss(self):
            return MyLoss()

    MyTrainer(TrainConfig(data=Path("Dataset001"), epochs=10)).run()

Example:
    >>> best = train(TrainConfig(data=Path("phantoms"), model="unet", fusion="dff", epochs=2, iters_per_epoch=5))
    >>> best.name
    'best.pt'
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionseg.checkpoints.checkpoint import (
    build_checkpoint,
    check_fields,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from fusionseg.data.transforms import plain_tensor
from fusionseg.errors import FusionSegError, InputError
from fusionseg.faults import maybe_fail
from fusionseg.files import write_csv_atomic, write_text_atomic
from fusionseg.nets.base import round_up_to_multiple
from fusionseg.nets.weights import one_line
from fusionseg.runtime import distributed
from fusionseg.runtime.devices import autocast, seed_everything, set_threads, tune_cpu_allocator
from fusionseg.runtime.precision import choose_amp
from fusionseg.training.config import TrainConfig, current_field_names
from fusionseg.training.losses import loss_for_labels
from fusionseg.training.optim import build_optimizer, poly_lr_lambda
from fusionseg.training.tensorboard_log import ScalarLog
from fusionseg.training.validation_dice import case_scores, score_names, validation_scores

__all__ = [
    "BUDGET_FIRST_GUESS",
    "BUDGET_VALIDATION_SHARE",
    "CSV_FIELDS",
    "CURVE_POINTS_PER_EPOCH",
    "VAL_CASES_PER_EPOCH",
    "TrainState",
    "Trainer",
    "build_model",
    "split_cases",
    "train",
]


VAL_CASES_PER_EPOCH = 8  # validation cases scored after each epoch but the last (which scores every one)


BUDGET_VALIDATION_SHARE = 0.25  # at most this share of a time budget is kept back for the closing validation


BUDGET_FIRST_GUESS = 0.1  # share kept back for validation before its cost has been measured


CURVE_POINTS_PER_EPOCH = 10  # learning-curve points of the training loss per epoch (short runs get a curve too)


CSV_FIELDS = ("epoch", "step", "train_loss", "val_dice", "lr", "train_time_s", "epoch_time_s")


# Settings a resumed run may change without changing its results.
_NOT_COMPARED = ("data", "output", "resume", "overwrite", "stop_after", "init", "workers", "cache", "device",
                 "threads", "progress")  # fmt: skip


@dataclass
class TrainState:
    """Counters and history of a run (saved in ``last.pt``, restored by ``resume``)."""

    epoch: int = 0
    step: int = 0
    best_metric: float = -math.inf
    train_time: float = 0.0  # seconds spent in training iterations (validation and writes excluded)
    run_time: float = 0.0  # wall seconds of the run up to the last checkpoint (what the time budget counts)
    budget_spent: float | None = None  # the time budget the run ended on (a rerun with it trains no more)
    training_start: float | None = None  # run_time when training began: the LR schedule spans the rest of the budget
    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)  # {"step", "train_loss", "time_s"} every few iterations

    @property
    def best(self) -> float | None:
        return self.best_metric if math.isfinite(self.best_metric) else None


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


def build_model(config: TrainConfig, pre: dict) -> nn.Module:
    """The registered model ``config.model`` for the data described by ``pre`` (``model.config`` records it)."""
    from fusionseg.nets.registry import create_model, list_models

    kwargs: dict[str, Any] = {
        "in_channels": int(pre["in_channels"]),
        "out_channels": int(pre.get("out_channels", pre["num_classes"])),  # one per region for region datasets
        "spatial_dims": int(pre["spatial_dims"]),
    }
    if config.deep_supervision is not None:
        kwargs["deep_supervision"] = bool(config.deep_supervision)
    if config.fusion is not None:
        kwargs["fusion"] = config.fusion
    for key in ("in_channels", "out_channels", "spatial_dims"):
        given = config.model_kwargs.get(key, kwargs[key])
        if given != kwargs[key]:
            raise InputError(
                f"--model-kwargs {key}={given!r} does not match the data ({key}={kwargs[key]}); leave {key} out: "
                "it comes from the dataset"
            )
    kwargs.update(config.model_kwargs)
    if config.model.lower() not in list_models():
        raise InputError(f"unknown model {config.model!r}; choose one of {', '.join(list_models())}")
    try:
        return create_model(config.model, **kwargs)
    except TypeError as err:
        hint = (
            " (--fusion is not an option of this model)" if config.fusion is not None and "fusion" in str(err) else ""
        )
        raise InputError(f"model {config.model!r} rejected its arguments: {err}{hint}") from None
    except ValueError as err:
        raise InputError(f"model {config.model!r}: {err}") from None


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**31


def _epoch_indices(num_items: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` case indices: concatenated random permutations (every case equally often)."""
    chunks, total = [], 0
    while total < count:
        chunks.append(torch.randperm(num_items, generator=generator))
        total += num_items
    return torch.cat(chunks)[:count].tolist()


class Trainer:
    """One training run of ``config``; :meth:`run` calls the ``build_*`` / ``*_step`` hooks in order.

    Hooks (override in a subclass): :meth:`split`, :meth:`build_model`, :meth:`build_datasets`,
    :meth:`build_loss`, :meth:`build_optimizer`, :meth:`build_scheduler`, :meth:`train_step`,
    :meth:`validate`. Attributes set up by :meth:`setup`: ``info`` (distributed), ``device``,
    ``dataset`` (:class:`~fusionseg.data.DatasetInfo`), ``pre`` (preprocessing), ``layout``
    (:class:`~fusionseg.data.LabelLayout`), ``model`` (bare) and ``net`` (DDP-wrapped), ``loss``,
    ``optimizer``, ``scheduler``, ``scaler``, ``amp_dtype``, ``state`` (:class:`TrainState`).
    :meth:`validate` may fill ``val_per_class`` ({class or region name: Dice}) for the logs.
    """

    def __init__(self, config: TrainConfig, log: Callable[..., None] = print) -> None:
        config.check()
        self.config = config
        self.output = Path(config.output)
        self.info = distributed.init_distributed(config.device)
        self.device = self.info.device
        self._log = log
        self.state = TrainState()
        self.val_per_class: dict[str, float] = {}
        self.scalars = ScalarLog(None)
        self._clock, self._elapsed_before = time.perf_counter(), 0.0
        self._val_case_s: float | None = None  # measured seconds per validation case
        self._save_s = 0.0  # measured seconds of the last checkpoint write
        self._first_step_s = 0.0  # measured seconds from an epoch's start to its first iteration's end
        self._closing = True  # whether the validation running now is the run's last

    # ------------------------------------------------------------------------------------ logging

    def log(self, *args, **kwargs) -> None:
        """Print on the main process only."""
        if self.info.is_main:
            self._log(*args, **kwargs)

    # -------------------------------------------------------------------------------------- hooks

    def split(self, cases: list) -> tuple[list, list]:
        """Training and validation cases: fold ``config.fold`` of ``splits_final.json``, else a seeded hold-out."""
        c = self.config
        if c.fold is None:
            return split_cases(cases, c.val_fraction, c.seed)
        from fusionseg.data import get_fold

        train_ids, val_ids = get_fold(self.dataset, c.fold, c.splits, c.num_folds)
        by_id = {case.case_id: case for case in cases}
        return [by_id[i] for i in train_ids], [by_id[i] for i in val_ids]

    def build_model(self, pre: dict) -> nn.Module:
        maybe_fail("train.build_model")
        return build_model(self.config, pre)

    def build_datasets(self, train_cases: list, val_cases: list) -> tuple[Any, Any]:
        """(training dataset of patch dicts streamed from the preprocessed cache, validation cases read on access).

        The main process preprocesses what the cache lacks (others wait); see :mod:`fusionseg.data.preprocess`.
        """
        from fusionseg.data.preprocess import cache_folder, preprocess_dataset
        from fusionseg.data.streaming import CachedCases, patch_dataset

        c = self.config
        if self.info.is_main:
            report = preprocess_dataset(self.dataset, self.plan, c.cache, c.workers, c.progress, self.log)
            report.check_complete([case.case_id for case in train_cases + val_cases])
        distributed.barrier(self.info)
        folder = cache_folder(self.plan, c.cache)
        train_ds = patch_dataset(folder, [case.case_id for case in train_cases], self.pre, augment=c.augment)
        return train_ds, CachedCases(folder, [case.case_id for case in val_cases])

    def build_loss(self) -> nn.Module:
        """The loss of the dataset's labels (:func:`~fusionseg.training.losses.loss_for_labels`)."""
        return loss_for_labels(self.layout)

    def build_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return build_optimizer(self.model.parameters(), c.optimizer, c.lr, c.weight_decay, c.momentum)

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        c = self.config
        used = self._budget_fraction if c.time_budget else None
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lr_lambda(c.epochs * c.iters_per_epoch, time_fraction=used)
        )

    def train_step(self, batch: dict) -> float:
        """One optimisation step on a batch of patches → its loss."""
        c = self.config
        image = plain_tensor(batch["image"]).to(self.device, non_blocking=True).float()[: c.batch_size]
        label = plain_tensor(batch["label"]).to(self.device, non_blocking=True)[: c.batch_size]
        if c.channels_last:
            from fusionseg.layers import to_channels_last

            image = to_channels_last(image)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            try:
                outputs = self.net(image)
            except ValueError as err:  # instance/batch norm of a deepest level of one voxel
                if "more than 1 spatial element" not in str(err):
                    raise
                patch = ",".join(map(str, self.pre["patch_size"]))
                raise InputError(
                    f"--patch-size {patch} is too small for {c.model} with these features: its deepest level holds one "
                    f"voxel; pass a larger --patch-size (e.g. {2 * int(self.model.size_multiple)} per axis) or fewer "
                    "features"
                ) from None
        loss = self.loss(outputs, label)
        del outputs
        if not torch.isfinite(loss):
            raise FusionSegError(f"training loss became {loss.item()} at step {self.state.step}; lower --lr")
        self.scaler.scale(loss).backward()
        if c.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    def validate(self) -> float | None:
        """Mean validation Dice of the current weights (None without validation cases); sets ``val_per_class``."""
        if not self.val_items:
            return None
        amp = self.amp_dtype
        items = self.val_items
        if self.state.epoch < self.config.epochs and len(items) > VAL_CASES_PER_EPOCH:
            items = items[:VAL_CASES_PER_EPOCH]  # the same cases every epoch; all of them at the end
        if self.config.time_budget is None:
            mean, self.val_per_class = validation_scores(
                self.model, items, self.pre, self.device, self.config.val_overlap, amp
            )
            return mean
        return self._validate_within_budget(items, amp)

    def _validate_within_budget(self, items: Any, amp: torch.dtype | None) -> float | None:
        """Validation Dice of the cases of ``items`` that fit in the time budget (one log line when not all);
        a validation before the last leaves room for another epoch's first iteration and the closing one."""
        budget, scores = self.config.time_budget, []
        limit = budget - self._save_s - (0.0 if self._closing else self._first_step_s + self._budget_reserve())
        for index in range(len(items)):
            if self.elapsed() + (self._val_case_s or 0.0) > limit:
                break
            start = time.perf_counter()
            scores += case_scores(self.model, [items[index]], self.pre, self.device, self.config.val_overlap, amp)
            self._val_case_s = time.perf_counter() - start
        if len(scores) < len(items):
            self.log(
                f"time budget of {budget:g} s: validation skipped ({len(items)} cases did not fit)"
                if not scores
                else f"time budget of {budget:g} s: validated {len(scores)} of {len(items)} cases to stay inside it"
            )
        if not scores:
            return None
        names = score_names(self.layout)
        self.val_per_class = {n: float(v) for n, v in zip(names, np.mean(np.stack(scores), axis=0))}
        return float(np.mean([np.mean(s) for s in scores]))

    def _budget_fraction(self) -> float:
        """Share of the time budget's training part (after setup: planning, preprocessing) used so far."""
        start = self.state.training_start or 0.0
        return (self.elapsed() - start) / max(float(self.config.time_budget) - start, 1e-9)

    def elapsed(self) -> float:
        """Wall seconds of the run so far (earlier invocations of a resumed run included)."""
        return self._elapsed_before + time.perf_counter() - self._clock

    def _budget_reserve(self) -> float:
        """Seconds kept back for the closing validation and checkpoint write (measured, else a share of the budget)."""
        budget = float(self.config.time_budget)
        if not self.val_items:
            validation = 0.0
        elif self._val_case_s is None:
            validation = BUDGET_FIRST_GUESS * budget
        else:
            validation = min(self._val_case_s * len(self.val_items), BUDGET_VALIDATION_SHARE * budget)
        return validation + self._save_s

    def _over_budget(self, closings: int = 1, extra: float = 0.0) -> bool:
        """Whether training must stop now to end the run inside the time budget, leaving room for
        ``closings`` validations and checkpoint writes and ``extra`` seconds."""
        budget = self.config.time_budget
        if budget is None:
            return False
        return self._all_agree(self.elapsed() + closings * self._budget_reserve() + extra >= budget)

    # ---------------------------------------------------------------------------------- the run

    def setup(self) -> None:
        """Read the dataset, build everything, restore a run to resume."""
        from fusionseg import data

        c = self.config
        threads, reason = set_threads(c.threads)
        if self.device.type == "cpu":
            tune_cpu_allocator()
            self.log(f"CPU threads: {threads} ({reason})")
        seed_everything(c.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        ds_info = self.dataset = data.scan_dataset(c.data)
        if not ds_info.cases:
            raise InputError(f"{c.data} has no training cases")
        if ds_info.mask_rule and self.info.is_main:
            self.log(f"masks ({ds_info.layout}): {ds_info.mask_rule}")
        from fusionseg.data.plan import PLAN_FILE, plan_dataset, save_plan

        self.plan = plan_dataset(
            ds_info,
            target_spacing=list(c.target_spacing) if isinstance(c.target_spacing, tuple | list) else c.target_spacing,
            patch_size=list(c.patch_size) if c.patch_size else None,
            batch_size=c.batch_size,
            cache=c.cache,
            workers=c.workers,
        )
        self.pre = self.plan["preprocessing"]
        self.layout = data.LabelLayout.from_preprocessing(self.pre)
        self._check_memory()
        self.model = self.build_model(self.pre)
        self._fit_patch_size(int(self.model.size_multiple))
        self.plan["patch_size"] = self.pre["patch_size"]
        if self.info.is_main:
            save_plan(self.plan, self.output / PLAN_FILE)
        num_samples = int(self.pre.get("num_samples", 1))
        self.cases_per_batch = -(-c.batch_size // num_samples)
        self.train_cases, self.val_cases = self.split(list(ds_info.cases))
        self.train_ds, self.val_items = self.build_datasets(self.train_cases, self.val_cases)
        if not c.resume:
            self._load_init()
        self.model = self.model.to(self.device)
        if c.channels_last:
            from fusionseg.layers import channels_last_format

            self.model = self.model.to(memory_format=channels_last_format(int(self.pre["spatial_dims"]) + 2))
        self.net = distributed.wrap_model(self.model, self.info)
        self.loss = self.build_loss()
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler()
        self.amp_dtype = self._choose_amp()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.last_path, self.best_path = self.output / "last.pt", self.output / "best.pt"
        if c.resume:
            self._restore()
        elif self.info.is_main and self.last_path.exists():
            self.log(f"note: {self.output} already holds a run; it will be overwritten (use --resume to continue it)")
        if self.info.is_main:
            self.scalars = ScalarLog(self.output, purge_step=self.state.step if c.resume else None, log=self.log)

    def run(self) -> Path:
        """Train; returns the path of ``best.pt`` (the highest validation Dice, else the last epoch)."""
        c = self.config
        self._clock = time.perf_counter()
        try:
            self.setup()
            self._elapsed_before = self.state.run_time
            if self.state.training_start is None:
                self.state.training_start = self.elapsed()
            params = sum(p.numel() for p in self.model.parameters()) / 1e6
            self.log(
                f"training {self.model.config['name']} ({params:.2f} M parameters) on {len(self.train_cases)} cases "
                f"(+{len(self.val_cases)} validation), patch {tuple(self.pre['patch_size'])}, batch {c.batch_size}, "
                f"{c.epochs} epochs × {c.iters_per_epoch} iterations, device {self.device}"
                + (f", {self.info.world_size} processes" if self.info.enabled else "")
            )
            spent = self.state.budget_spent is not None and c.time_budget is not None
            out_of_time = c.time_budget is not None and (
                self.state.run_time >= c.time_budget or (spent and c.time_budget <= self.state.budget_spent)
            )
            epochs_this_run = 0
            while self.state.epoch < c.epochs and not out_of_time:
                out_of_time = self._run_epoch()
                epochs_this_run += 1
                finished = self.state.epoch >= c.epochs or out_of_time
                if c.stop_after is not None and epochs_this_run >= c.stop_after and not finished:
                    self.log(f"stopping after {epochs_this_run} epoch(s) as asked; continue with --resume")
                    break
            if out_of_time:
                self.log(
                    f"time budget of {c.time_budget:g} s reached after {self.state.step} iterations "
                    f"({self.elapsed():.1f} s of wall clock)"
                )
            if self.info.is_main:
                if not self.best_path.exists() and self.last_path.exists():
                    save_checkpoint(self.best_path, self._checkpoint())
                if epochs_this_run == 0 and self.state.history:  # e.g. a resume after a full disk at best.pt
                    self._write_logs()
                summary = {
                    "epochs": self.state.epoch,
                    "steps": self.state.step,
                    "train_time_s": self.state.train_time,
                    "run_time_s": round(self.elapsed(), 3),
                    "best_val_dice": self.state.best,
                    "out_of_time": out_of_time,
                    "fold": c.fold,
                    "train_cases": [case.case_id for case in self.train_cases],
                    "val_cases": [case.case_id for case in self.val_cases],
                }
                write_text_atomic(self.output / "train_summary.json", json.dumps(summary, indent=2))
            return self.best_path
        finally:
            self.scalars.close()
            distributed.cleanup(self.info)

    # --------------------------------------------------------------------------------- internals

    def _check_memory(self) -> None:
        """One line with the estimate when a training step of this model, batch and patch cannot fit the device."""
        from fusionseg.runtime.memory import check_fits, training_memory

        c, patch = self.config, self.pre.get("patch_size")
        if not patch:
            return
        shape = (c.batch_size, int(self.pre["in_channels"]), *patch)
        need = training_memory(lambda: build_model(c, self.pre), shape)
        sizes = f"--batch-size {c.batch_size} × --patch-size {','.join(map(str, patch))} with {c.model}"
        check_fits(need, self.device, sizes)

    def _fit_patch_size(self, multiple: int) -> None:
        patch = self.pre.get("patch_size")
        if not patch:
            raise InputError("the preprocessing has no patch size; pass --patch-size (e.g. 96,96 or 64,64,64)")
        fitted = [round_up_to_multiple(int(p), multiple) for p in patch]
        if fitted != list(patch):
            self.log(f"patch size {tuple(patch)} rounded up to {tuple(fitted)} (multiples of size_multiple={multiple})")
        self.pre["patch_size"] = fitted

    def _loader(self, epoch: int):
        from monai.data import DataLoader

        c, info = self.config, self.info
        maybe_fail("train.load_data")
        epoch_seed = _epoch_seed(c.seed, epoch, info.rank)
        seed_everything(epoch_seed)
        order = torch.Generator().manual_seed(_epoch_seed(c.seed, epoch, 0))
        count = c.iters_per_epoch * self.cases_per_batch * info.world_size
        indices = _epoch_indices(len(self.train_ds), count, order)
        return DataLoader(
            self.train_ds,
            batch_size=self.cases_per_batch,
            sampler=indices[info.rank :: info.world_size],
            num_workers=c.workers,
            generator=torch.Generator().manual_seed(epoch_seed),
        )

    def _run_epoch(self) -> bool:
        """Train one epoch, validate, log and save → whether the time budget ran out."""
        c, state = self.config, self.state
        epoch_start = time.perf_counter()
        loader = self._loader(state.epoch)
        self.net.train()
        losses, out_of_time, window = [], False, []
        curve_every = max(1, c.iters_per_epoch // CURVE_POINTS_PER_EPOCH)
        bar = self._progress_bar()
        tick = time.perf_counter()
        for batch in loader:
            loss = self.train_step(batch)
            maybe_fail("train.step")
            losses.append(loss)
            window.append(loss)
            state.step += 1
            if len(window) >= curve_every:
                self._add_curve_point(window)
            now = time.perf_counter()
            state.train_time += now - tick
            step_s, tick = now - tick, now
            if len(losses) == 1:
                self._first_step_s = now - epoch_start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            if self._over_budget(extra=step_s):  # room for one more iteration and the closing validation
                out_of_time = True
                break
        if bar is not None:
            bar.close()
        if window:
            self._add_curve_point(window)
        state.epoch += 1
        train_loss = distributed.all_reduce_mean(float(np.mean(losses)) if losses else math.nan, self.info)
        # no room for this epoch's validation, another epoch's first iteration and the closing validation
        closings = 2 if state.epoch % c.val_every == 0 else 1
        out_of_time = out_of_time or (state.epoch < c.epochs and self._over_budget(closings, self._first_step_s))
        finished = state.epoch >= c.epochs or out_of_time
        if out_of_time:
            state.budget_spent = c.time_budget
        val_dice = None
        self.val_per_class = {}
        if self.info.is_main and (state.epoch % c.val_every == 0 or finished):
            self._closing = finished
            val_dice = self.validate()
        improved = val_dice is not None and val_dice > state.best_metric
        if improved:
            state.best_metric = val_dice
        state.history.append(
            {
                "epoch": state.epoch,
                "step": state.step,
                "train_loss": round(train_loss, 6),
                "val_dice": None if val_dice is None else round(val_dice, 6),
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_time_s": round(state.train_time, 3),
                "epoch_time_s": round(time.perf_counter() - epoch_start, 3),
            }
        )
        if self.info.is_main:
            self._log_scalars(train_loss, val_dice)
            self.log(
                f"epoch {state.epoch}/{c.epochs}: loss {train_loss:.4f}"
                + ("" if val_dice is None else f", val Dice {val_dice:.4f}" + (" (best)" if improved else ""))
                + f", {state.train_time:.0f} s"
            )
            self._save(improved or (not self.val_items and finished), finished)
        distributed.barrier(self.info)
        return out_of_time

    def _add_curve_point(self, window: list[float]) -> None:
        """One learning-curve point: the mean loss of the iterations in ``window`` (then emptied)."""
        loss = round(float(np.mean(window)), 6)
        self.state.curve.append({"step": self.state.step, "train_loss": loss, "time_s": round(self.elapsed(), 3)})
        window.clear()

    def _log_scalars(self, train_loss: float, val_dice: float | None) -> None:
        """TensorBoard scalars of the epoch just finished, at the global iteration count."""
        values = {"train/loss": train_loss, "train/lr": self.optimizer.param_groups[0]["lr"]}
        if val_dice is not None:
            values["val/dice"] = val_dice
            values.update({f"val/dice_{name}": v for name, v in self.val_per_class.items()})
        self.scalars.add(self.state.step, values)

    def _checkpoint(self) -> dict:
        return {
            **build_checkpoint(
                self.model,
                preprocessing=self.pre,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                epoch=self.state.epoch,
                step=self.state.step,
                best_metric=self.state.best,
                train_args=self.config.plain(),
            ),
            "train_time": float(self.state.train_time),
            "run_time": float(self.state.run_time),
            "budget_spent": self.state.budget_spent,
            "training_start": self.state.training_start,
            "history": self.state.history,
            "curve": self.state.curve,
        }

    def _save(self, as_best: bool, finished: bool) -> None:
        """``last.pt``, then ``best.pt`` (when ``as_best``), ``log.csv`` and the learning curve.

        ``last.pt`` comes first so that a resume always finds the newest state; it records ``is_best``,
        so a kill before ``best.pt`` is written is repaired by :meth:`_restore`.
        """
        start = time.perf_counter()
        self.state.run_time = self.elapsed()
        ckpt = self._checkpoint()
        save_checkpoint(self.last_path, {**ckpt, "finished": finished, "is_best": as_best})
        maybe_fail("train.checkpoint")
        if as_best:
            save_checkpoint(self.best_path, ckpt)
        self._write_logs()
        self._save_s = time.perf_counter() - start

    def _write_logs(self) -> None:
        """``log.csv`` and the learning curve from the history."""
        _write_csv(self.state.history, self.output / "log.csv")
        from fusionseg.evaluation.report import plot_learning_curve

        plot_learning_curve(self.state.history, self.output / "learning_curve.png", curve=self.state.curve)

    def _load_init(self) -> None:
        """Initial weights for a run that starts afresh: pretrained encoders (``config.pretrained``), then
        ``config.init`` (where names and shapes fit)."""
        if self.config.pretrained:
            from fusionseg.nets.swin_pretrained import load_pretrained_encoders

            self.log(load_pretrained_encoders(self.model, self.config.pretrained))
        if self.config.init is None:
            return
        from fusionseg.nets.weights import load_pretrained

        report = load_pretrained(self.model, self.config.init, strict=False)
        total = len(self.model.state_dict())
        if 2 * len(report.loaded) < total:  # mostly a run from scratch that claims to start from --init
            raise InputError(
                f"--init {self.config.init}: only {len(report.loaded)} of the {total} tensors of {self.config.model} "
                "fit (another model or size); pass weights of this model with the same --model-kwargs"
            )
        self.log(
            f"initialised {len(report.loaded)} tensors from {self.config.init}"
            + ("" if report.ok else f"; {report.problems()}")
        )

    def _newest_checkpoint(self) -> tuple[dict | None, Path | None]:
        """The first readable of ``last.pt``, ``best.pt`` → (checkpoint, path); (None, None) when none is.

        An unreadable file (torn by a crash of an older writer, emptied by a full disk) is reported in one line.
        """
        for path in (self.last_path, self.best_path):
            if not path.exists():
                continue
            try:
                ckpt = load_checkpoint(path)
                check_fields(ckpt, str(path))
                return ckpt, path
            except InputError as err:
                self.log(f"warning: --resume: skipping {path}: {err}")
        return None, None

    def _restore(self) -> None:
        """Continue from the newest readable checkpoint of the run folder; without one, start afresh (one note)."""
        c = self.config
        ckpt, path = self._newest_checkpoint()
        if ckpt is None:
            self.log(f"note: no readable last.pt or best.pt in {self.output} to resume from; starting the run afresh")
            self._load_init()
            return
        saved_model = ckpt.get("model", {})
        if (
            saved_model.get("name") != self.model.config["name"]
            or saved_model.get("kwargs") != self.model.config["kwargs"]
        ):
            raise InputError(
                f"--resume: {path} holds model {saved_model}, not {self.model.config}; "
                "use the same --model/--fusion options"
            )
        saved, current = current_field_names(ckpt.get("train_args") or {}), c.plain()
        for key in sorted(set(saved) & set(current) - set(_NOT_COMPARED)):
            if saved[key] != current[key]:
                self.log(f"warning: resuming with {key}={current[key]}, but the run used {saved[key]}; results differ")
        try:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as err:
            raise InputError(f"--resume: {path} does not fit the model ({one_line(str(err), 160)})") from None
        if ckpt.get("optimizer") is None:  # e.g. written by import-weights: weights only
            self.log(
                f"note: {path} holds weights only (no optimizer state, e.g. from import-weights); continuing from "
                f"epoch {int(ckpt.get('epoch', 0))} with a fresh optimizer and learning-rate schedule"
            )
        else:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
                if ckpt.get("scheduler") is not None:
                    self.scheduler.load_state_dict(ckpt["scheduler"])
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise InputError(
                    f"--resume: the optimizer state in {path} does not fit ({one_line(str(err), 120)}); use the same "
                    "--optimizer, or start a new run with --init"
                ) from None
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt.get("rng"))
        self.log(f"resuming from {path} at epoch {ckpt.get('epoch', 0)} (step {ckpt.get('step', 0)})")
        best = ckpt.get("best_metric")
        self.state = TrainState(
            epoch=int(ckpt.get("epoch", 0)),
            step=int(ckpt.get("step", 0)),
            best_metric=-math.inf if best is None else float(best),
            train_time=float(ckpt.get("train_time", 0.0)),
            run_time=float(ckpt.get("run_time", ckpt.get("train_time", 0.0))),
            budget_spent=ckpt.get("budget_spent"),
            training_start=ckpt.get("training_start"),
            history=list(ckpt.get("history", [])),
            curve=list(ckpt.get("curve", [])),
        )
        best_written = self.best_path.exists() and self.best_path.stat().st_mtime_ns >= path.stat().st_mtime_ns
        if self.info.is_main and path == self.last_path and ckpt.get("is_best") and not best_written:
            save_checkpoint(self.best_path, {k: v for k, v in ckpt.items() if k not in ("finished", "is_best")})

    def _choose_amp(self) -> torch.dtype | None:
        """``--amp``'s dtype where a timed step shows it pays for this model and patch
        (:mod:`~fusionseg.runtime.precision`); every rank takes the reduced dtype only if all ranks chose it."""
        c = self.config
        shape = (c.batch_size, int(self.pre["in_channels"]), *self.pre["patch_size"])
        dtype = choose_amp(self.model, shape, self.device, c.amp, "train", log=self.log)
        if self.info.enabled and distributed.all_reduce_mean(float(dtype is not None), self.info) < 1.0:
            return None
        return dtype

    def _all_agree(self, flag: bool) -> bool:
        """All ranks stop together: any rank out of budget stops everyone."""
        return distributed.all_reduce_mean(float(flag), self.info) > 0

    def _progress_bar(self):
        """A bar over the epoch's iterations on a terminal only; logs get the one line per epoch."""
        from fusionseg.runtime.progress import progress_bar

        c = self.config
        enabled = c.progress and self.info.is_main
        return progress_bar(c.iters_per_epoch, f"epoch {self.state.epoch + 1}/{c.epochs}", enabled=enabled)


def _write_csv(history: list[dict], path: Path) -> None:
    """Rewrite the CSV log from the history (a resumed run's log has no duplicated epochs)."""
    write_csv_atomic(path, history, CSV_FIELDS)


def train(config: TrainConfig) -> Path:
    """Train ``config`` with the default :class:`Trainer` → path of ``best.pt``."""
    return Trainer(config).run()
