"""Training: the :class:`~fusionseg.training.trainer.Trainer` and what it is built from.

- :mod:`.trainer`: the loop (hooks, epochs, time budget, resume); :mod:`.config`: ``TrainConfig``;
- :mod:`.losses`, :mod:`.optim`, :mod:`.validation_dice` (sliding-window Dice of the validation cases),
  :mod:`.tensorboard_log`, :mod:`.run_folder` (one run per output folder).
"""
