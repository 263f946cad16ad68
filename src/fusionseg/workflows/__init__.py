"""Multi-run workflows built on the stages: the demo, fusion ablations, k-fold cross-validation.

- :mod:`.demo` (``fusionseg demo``), :mod:`.ablate` (``fusionseg ablate``: the same backbone with each
  fusion, equal budget), :mod:`.crossval` (``fusionseg train --cross-validate``: folds, ensemble, postprocessing),
  :mod:`.training_run` (``fusionseg train`` as one call: one run or a cross-validation).
"""
