"""The training loop: a :class:`Trainer` built from small overridable hooks, and :func:`train`.

One iteration trains on ``config.batch_size`` patches streamed from the preprocessed cache: the loss of
the dataset's labels (:func:`~fusionseg.training.losses.loss_for_labels`), SGD (Nesterov, poly LR) or
AdamW, optional mixed precision. After every ``val_every`` epochs, the sliding-window validation Dice
of at most ``VAL_CASES_PER_EPOCH`` cases (every one after the last epoch); then ``last.pt`` / ``best.pt``,
``log.csv``, a learning curve (``CURVE_POINTS_PER_EPOCH`` points per epoch) and TensorBoard scalars.

The parts: :mod:`.run_setup` (the ``build_*`` hooks and everything before the first step: plan, model,
split, datasets), :mod:`.time_budget` (the wall clock of the whole run: training stops, and validation
scores only the cases that fit, to end inside ``config.time_budget``), :mod:`.resume` (checkpoints,
logs, restore), :mod:`.cases` (split, per-epoch order), :mod:`.config` (the run and the invocation).

Reproducibility: every epoch reseeds all random generators from ``(seed, epoch, rank)``, and ``last.pt``
is written at epoch boundaries: a run killed at any moment and continued with ``resume`` ends with
exactly the weights of an uninterrupted run with the same seed (bit-identical on CPU).

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusionseg.checkpoints.checkpoint import build_checkpoint, save_checkpoint
from fusionseg.data.transforms import plain_tensor
from fusionseg.errors import FusionSegError, InputError
from fusionseg.evaluation.validation_dice import case_scores, score_names, validation_scores
from fusionseg.faults import maybe_fail
from fusionseg.files import write_text_atomic
from fusionseg.nets.registry import model_attribute, model_config
from fusionseg.runtime import distributed
from fusionseg.runtime.devices import autocast, seed_everything
from fusionseg.training.cases import epoch_indices, epoch_seed, split_cases
from fusionseg.training.config import TrainConfig
from fusionseg.training.model_setup import build_model
from fusionseg.training.resume import CSV_FIELDS, TrainState
from fusionseg.training.run_setup import RunSetup
from fusionseg.training.time_budget import BUDGET_FIRST_GUESS, BUDGET_VALIDATION_SHARE

__all__ = [
    "BUDGET_FIRST_GUESS",
    "BUDGET_VALIDATION_SHARE",
    "CSV_FIELDS",
    "CURVE_POINTS_PER_EPOCH",
    "VAL_CASES_PER_EPOCH",
    "RunSetup",
    "TrainState",
    "Trainer",
    "build_model",
    "split_cases",
    "train",
]


VAL_CASES_PER_EPOCH = 8  # validation cases scored after each epoch but the last (which scores every one)


CURVE_POINTS_PER_EPOCH = 10  # learning-curve points of the training loss per epoch (short runs get a curve too)


class Trainer(RunSetup):
    """One training run of ``config``: :meth:`run` sets it up (:class:`~fusionseg.training.run_setup.RunSetup`:
    the ``build_*`` hooks), then trains epoch by epoch with :meth:`train_step` and :meth:`validate`.

    Hooks (override in a subclass): :meth:`split`, :meth:`build_model`, :meth:`build_datasets`,
    :meth:`build_loss`, :meth:`build_optimizer`, :meth:`build_scheduler`, :meth:`train_step`,
    :meth:`validate`; the attributes they use are listed in :class:`~fusionseg.training.run_setup.RunSetup`.
    :meth:`validate` may fill ``val_per_class`` ({class or region name: Dice}) for the logs.
    """

    def __init__(self, config: TrainConfig, log: Callable[..., None] = print) -> None:
        super().__init__(config, log)
        self.val_per_class: dict[str, float] = {}
        self._closing = True  # whether the validation running now is the run's last

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
                patch = ",".join(map(str, self.pre.patch_size or ()))
                smallest = 2 * model_attribute(self.model, "size_multiple")
                raise InputError(
                    f"--patch-size {patch} is too small for {c.model} with these features: its deepest level holds one "
                    f"voxel; pass a larger --patch-size (e.g. {smallest} per axis) or fewer "
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
        clock, budget, scores = self.clock, self.config.time_budget, []
        limit = clock.validation_limit(self._closing, len(self.val_items))
        for index in range(len(items)):
            if clock.elapsed() + (clock.val_case_s or 0.0) > limit:
                break
            start = time.perf_counter()
            scores += case_scores(self.model, [items[index]], self.pre, self.device, self.config.val_overlap, amp)
            clock.val_case_s = time.perf_counter() - start
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

    def elapsed(self) -> float:
        """Wall seconds of the run so far (earlier invocations of a resumed run included)."""
        return self.clock.elapsed()

    def _over_budget(self, closings: int = 1, extra: float = 0.0) -> bool:
        """Whether training must stop now to end the run inside the time budget, leaving room for
        ``closings`` validations and checkpoint writes and ``extra`` seconds."""
        if self.config.time_budget is None:
            return False
        return self._all_agree(self.clock.out_of_time(len(self.val_items), closings, extra))

    # ---------------------------------------------------------------------------------- the run

    def run(self) -> Path:
        """Train; returns the path of ``best.pt`` (the highest validation Dice, else the last epoch)."""
        c = self.config
        self.clock.restart()
        try:
            self.setup()
            self.clock.before = self.state.run_time  # earlier invocations of a resumed run (this setup counts)
            if self.state.training_start is None:
                self.state.training_start = self.elapsed()
            params = sum(p.numel() for p in self.model.parameters()) / 1e6
            name = model_config(self.model)["name"]
            self.log(
                f"training {name} ({params:.2f} M parameters) on {len(self.train_cases)} cases "
                f"(+{len(self.val_cases)} validation), patch {self.pre.patch_size}, batch {c.batch_size}, "
                f"{c.epochs} epochs × {c.iters_per_epoch} iterations, device {self.device}"
                + (f", {self.info.world_size} processes" if self.info.enabled else "")
            )
            budget, spent = c.time_budget, self.state.budget_spent
            out_of_time = budget is not None and (
                self.state.run_time >= budget or (spent is not None and budget <= spent)
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
                if not self.files.best_path.exists() and self.files.last_path.exists():
                    save_checkpoint(self.files.best_path, self._checkpoint())
                if epochs_this_run == 0 and self.state.history:  # e.g. a resume after a full disk at best.pt
                    self.files.write_logs(self.state)
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
            return self.files.best_path
        finally:
            self.scalars.close()
            distributed.cleanup(self.info)

    # --------------------------------------------------------------------------------- internals

    def _loader(self, epoch: int):
        from monai.data import DataLoader

        c, info = self.config, self.info
        maybe_fail("train.load_data")
        seed = epoch_seed(c.seed, epoch, info.rank)
        seed_everything(seed)
        order = torch.Generator().manual_seed(epoch_seed(c.seed, epoch, 0))
        count = c.iters_per_epoch * self.cases_per_batch * info.world_size
        indices = epoch_indices(len(self.train_ds), count, order)
        return DataLoader(
            self.train_ds,
            batch_size=self.cases_per_batch,
            sampler=indices[info.rank :: info.world_size],
            num_workers=c.workers,
            generator=torch.Generator().manual_seed(seed),
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
                self.clock.first_step_s = now - epoch_start
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
        out_of_time = out_of_time or (state.epoch < c.epochs and self._over_budget(closings, self.clock.first_step_s))
        finished = state.epoch >= c.epochs or out_of_time
        if out_of_time:
            state.budget_spent = c.time_budget
        val_dice = None
        self.val_per_class = {}
        if self.info.is_main and (state.epoch % c.val_every == 0 or finished):
            self._closing = finished
            val_dice = self.validate()
        improved = False
        if val_dice is not None and val_dice > state.best_metric:
            state.best_metric, improved = val_dice, True
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
                train_args=self.config.definition().plain(),
            ),
            **self.state.checkpoint_entries(),
        }

    def _save(self, as_best: bool, finished: bool) -> None:
        """``last.pt``, then ``best.pt`` (when ``as_best``), ``log.csv`` and the learning curve
        (:meth:`~fusionseg.training.resume.RunFiles.save`); the write's time is kept back from the budget."""
        start = time.perf_counter()
        self.state.run_time = self.elapsed()
        self.files.save(self._checkpoint(), self.state, as_best, finished)
        self.clock.save_s = time.perf_counter() - start

    def _all_agree(self, flag: bool) -> bool:
        """All ranks stop together: any rank out of budget stops everyone."""
        return distributed.all_reduce_mean(float(flag), self.info) > 0

    def _progress_bar(self):
        """A bar over the epoch's iterations on a terminal only; logs get the one line per epoch."""
        from fusionseg.runtime.progress import progress_bar

        c = self.config
        enabled = c.progress and self.info.is_main
        return progress_bar(c.iters_per_epoch, f"epoch {self.state.epoch + 1}/{c.epochs}", enabled=enabled)


def train(config: TrainConfig) -> Path:
    """Train ``config`` with the default :class:`Trainer` → path of ``best.pt``."""
    return Trainer(config).run()
