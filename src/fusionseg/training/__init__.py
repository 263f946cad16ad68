"""Training: the :class:`~fusionseg.training.trainer.Trainer` and what it is built from.

- :mod:`.trainer`: the loop (epochs, steps, validation); :mod:`.run_setup`: the ``build_*`` hooks and the setup
  before the first step; :mod:`.config`: ``RunDefinition`` (what the run is) + ``Invocation`` (how this
  invocation runs it) = ``TrainConfig``;
- :mod:`.model_setup` (model, first weights), :mod:`.cases` (split, per-epoch order), :mod:`.time_budget`,
  :mod:`.resume` (checkpoints, logs, restore), :mod:`.losses`, :mod:`.optim`, :mod:`.run_folder` (one run
  per output folder; its ``config.yaml``). Validation Dice: :mod:`fusionseg.evaluation.validation_dice`;
  TensorBoard scalars: :mod:`fusionseg.runtime.tensorboard_log`.
"""
