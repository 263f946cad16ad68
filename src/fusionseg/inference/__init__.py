"""Prediction: cases in, label maps (and probabilities) out, in each input's own geometry.

- :mod:`.run` — :func:`~fusionseg.inference.run.run_prediction`, what ``fusionseg predict`` calls;
- :mod:`.predict_files`: a folder of cases with one model or an ensemble (resumable, prefetching);
- :mod:`.slab_inference` / :mod:`.slab_predict`: the bounded-memory sliding window, slab by slab;
- :mod:`.sliding_window`: the whole-image reference (MONAI's sliding window);
- :mod:`.inputs`, :mod:`.checkpoint_files`: which cases, which checkpoints;
- :mod:`.postprocess`, :mod:`.sharding`, :mod:`.prefetch`, :mod:`.predictors` (other frameworks' checkpoints).
"""
