"""Scores of label maps against references: metrics (MONAI's Dice, HD95, surface Dice), reports, tables.

- :mod:`.evaluate` — what ``fusionseg evaluate`` runs; :mod:`.metrics`; :mod:`.report` (tables, JSON, CSV).
"""
