"""Everything a training run needs before its first step, built by overridable hooks: :class:`RunSetup`,
the base of :class:`~fusionseg.training.trainer.Trainer`.

:meth:`RunSetup.setup` sets the CPU threads and seeds, reads and plans the dataset (``plans.json`` in
the run folder), builds the model (:meth:`~RunSetup.build_model`; its patch size rounded up to the
model's size multiple), splits the cases (:meth:`~RunSetup.split`), preprocesses what the cache lacks
and streams patches (:meth:`~RunSetup.build_datasets`), builds the loss, optimizer and LR schedule,
chooses the ``--amp`` dtype by a timed step, then loads the first weights (``init``, ``pretrained``) or
restores the run to resume (:mod:`fusionseg.training.resume`).

Example:
    >>> trainer = Trainer(TrainConfig(data=Path("phantoms"), epochs=2))
    >>> trainer.setup()
    >>> trainer.model.config["name"], len(trainer.train_cases), trainer.pre.patch_size
    ('unet', 16, (64, 64))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionseg.data.preprocessing import Preprocessing
from fusionseg.errors import InputError
from fusionseg.faults import maybe_fail
from fusionseg.nets.base import round_up_to_multiple
from fusionseg.nets.registry import model_attribute
from fusionseg.runtime import distributed
from fusionseg.runtime.devices import seed_everything, set_threads, tune_cpu_allocator
from fusionseg.runtime.precision import choose_amp
from fusionseg.runtime.tensorboard_log import ScalarLog
from fusionseg.training.cases import split_cases
from fusionseg.training.config import TrainConfig
from fusionseg.training.losses import loss_for_labels
from fusionseg.training.model_setup import build_model, load_initial_weights
from fusionseg.training.optim import build_optimizer, poly_lr_lambda
from fusionseg.training.resume import RunFiles, TrainState, restore_training
from fusionseg.training.time_budget import RunClock

__all__ = ["RunSetup"]


class RunSetup:
    """What a run of ``config`` trains with; :meth:`setup` calls the ``build_*`` hooks in order.

    Hooks (override in a subclass of :class:`~fusionseg.training.trainer.Trainer`): :meth:`split`,
    :meth:`build_model`, :meth:`build_datasets`, :meth:`build_loss`, :meth:`build_optimizer`,
    :meth:`build_scheduler`. Attributes from the start: ``config``, ``output``, ``info`` (distributed),
    ``device``, ``state`` (:class:`~fusionseg.training.resume.TrainState`), ``clock``
    (:class:`~fusionseg.training.time_budget.RunClock`), ``files``
    (:class:`~fusionseg.training.resume.RunFiles`); set up by :meth:`setup`: ``dataset``
    (:class:`~fusionseg.data.DatasetInfo`), ``plan`` (:class:`~fusionseg.data.plan.Plan`), ``pre`` (its
    :class:`~fusionseg.data.Preprocessing`), ``layout``
    (:class:`~fusionseg.data.LabelLayout`), ``train_cases`` / ``val_cases``, ``train_ds`` / ``val_items``,
    ``model`` (bare) and ``net`` (DDP-wrapped), ``loss``, ``optimizer``, ``scheduler``, ``scaler``,
    ``amp_dtype``, ``scalars`` (TensorBoard).
    """

    def __init__(self, config: TrainConfig, log: Callable[..., None] = print) -> None:
        config.check()
        self.config = config
        self.output = Path(config.output)
        self.info = distributed.init_distributed(config.device)
        self.device = self.info.device
        self._log = log
        self.state = TrainState()
        self.scalars = ScalarLog(None)
        self.clock = RunClock(config.time_budget)
        self.files = RunFiles(self.output)

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

    def build_model(self, pre: Preprocessing) -> nn.Module:
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
        used = (lambda: self.clock.fraction_used(self.state.training_start)) if c.time_budget else None
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lr_lambda(c.epochs * c.iters_per_epoch, time_fraction=used)
        )

    # ---------------------------------------------------------------------------------- the setup

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
        self.pre = self.plan.preprocessing
        self.layout = self.pre.label_layout
        self._check_memory()
        self.model = self.build_model(self.pre)
        self._fit_patch_size(model_attribute(self.model, "size_multiple"))
        if self.info.is_main:
            save_plan(self.plan, self.output / PLAN_FILE)
        self.cases_per_batch = -(-c.batch_size // self.pre.num_samples)
        self.train_cases, self.val_cases = self.split(list(ds_info.cases))
        self.train_ds, self.val_items = self.build_datasets(self.train_cases, self.val_cases)
        if not c.resume:
            load_initial_weights(self.model, c, self.log)
        self.model = self.model.to(self.device)
        if c.channels_last:
            from fusionseg.layers import channels_last_format

            memory_format = channels_last_format(self.pre.spatial_dims + 2)
            # Module.to takes memory_format, which torch's stubs leave out
            self.model = self.model.to(memory_format=memory_format)  # type: ignore[call-overload]
        self.net = distributed.wrap_model(self.model, self.info)
        self.loss = self.build_loss()
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler()
        self.amp_dtype = self._choose_amp()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if c.resume:
            self._restore()
        elif self.info.is_main and self.files.last_path.exists():
            self.log(f"note: {self.output} already holds a run; it will be overwritten (use --resume to continue it)")
        if self.info.is_main:
            self.scalars = ScalarLog(self.output, purge_step=self.state.step if c.resume else None, log=self.log)

    def _check_memory(self) -> None:
        """One line with the estimate when a training step of this model, batch and patch cannot fit the device."""
        from fusionseg.runtime.memory import check_fits, training_memory

        c, patch = self.config, self.pre.patch_size
        if not patch:
            return
        shape = (c.batch_size, self.pre.in_channels, *patch)
        need = training_memory(lambda: build_model(c, self.pre), shape)
        sizes = f"--batch-size {c.batch_size} × --patch-size {','.join(map(str, patch))} with {c.model}"
        check_fits(need, self.device, sizes)

    def _fit_patch_size(self, multiple: int) -> None:
        """The plan's patch rounded up to the network's ``size_multiple`` (plan and preprocessing follow)."""
        patch = self.pre.patch_size
        if not patch:
            raise InputError("the preprocessing has no patch size; pass --patch-size (e.g. 96,96 or 64,64,64)")
        fitted = tuple(round_up_to_multiple(p, multiple) for p in patch)
        if fitted != patch:
            self.log(f"patch size {patch} rounded up to {fitted} (multiples of size_multiple={multiple})")
        self.plan = self.plan.with_patch_size(fitted)
        self.pre = self.plan.preprocessing

    def _restore(self) -> None:
        """Continue from the newest readable checkpoint of the run folder; without one, start afresh (one note)."""
        newest = self.files.newest_checkpoint(self.log)
        if newest is None:
            self.log(f"note: no readable last.pt or best.pt in {self.output} to resume from; starting the run afresh")
            load_initial_weights(self.model, self.config, self.log)
            return
        ckpt, path = newest
        parts = (self.model, self.optimizer, self.scheduler, self.scaler)
        self.state = restore_training(ckpt, path, *parts, self.config.definition(), self.log)
        if self.info.is_main:
            self.files.repair_best(ckpt, path)

    def _choose_amp(self) -> torch.dtype | None:
        """``--amp``'s dtype where a timed step shows it pays for this model and patch
        (:mod:`~fusionseg.runtime.precision`); every rank takes the reduced dtype only if all ranks chose it."""
        c = self.config
        shape = (c.batch_size, self.pre.in_channels, *(self.pre.patch_size or ()))
        dtype = choose_amp(self.model, shape, self.device, c.amp, "train", log=self.log)
        if self.info.enabled and distributed.all_reduce_mean(float(dtype is not None), self.info) < 1.0:
            return None
        return dtype
