"""Scores of label maps against references: metrics (MONAI's Dice, HD95, surface Dice), reports, tables.

- :mod:`.run` — :func:`~fusionseg.evaluation.run.run_evaluation`, what ``fusionseg evaluate`` calls;
- :mod:`.evaluate` (folders of label maps scored and written); :mod:`.metrics`; :mod:`.report` (tables, JSON, CSV);
- :mod:`.validation_dice`: sliding-window Dice of validation cases (what training reports per epoch).
"""
