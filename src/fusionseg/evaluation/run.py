"""``fusionseg evaluate`` as one call: check the folders, score, write the tables, print the summary.

:func:`run_evaluation` takes the command's options (:class:`EvaluationOptions`), refuses to score the
ground truth against itself or to write into it, scores every case
(:func:`fusionseg.evaluation.evaluate.write_evaluation`: ``metrics.csv``, ``summary.json``, overlays) and
prints the table; its return value is the command's exit status.

Example:
    >>> run_evaluation(EvaluationOptions(pred=Path("preds"), gt=Path("Dataset001/labelsTs")))
    | class | Dice | ...
    wrote preds/metrics.csv and preds/summary.json
    0
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fusionseg.errors import InputError
from fusionseg.evaluation.metrics import DEFAULT_NSD_TOLERANCE

__all__ = ["EvaluationOptions", "check_folders", "run_evaluation"]


@dataclass(frozen=True)
class EvaluationOptions:
    """The options of ``fusionseg evaluate`` (docs/cli.md), named as its parser's destinations.

    ``output``: where the tables go (None: ``pred``). ``labels``: the foreground labels to score (None:
    every label of the ground truth, or the classes of ``dataset_json``).
    """

    pred: Path
    gt: Path
    images: Path | None = None
    output: Path | None = None
    labels: Sequence[int] | None = None
    dataset_json: Path | None = None
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE
    num_overlays: int = 2


def run_evaluation(options: EvaluationOptions) -> int:
    """Score ``options.pred`` against ``options.gt``, write the tables and print the summary → exit status 0."""
    from fusionseg.evaluation.evaluate import format_summary_table, read_label_layout, write_evaluation

    o = options
    layout = read_label_layout(o.dataset_json) if o.dataset_json is not None else None
    output = o.output or o.pred
    check_folders(o.pred, o.gt, output)
    labels = list(o.labels) if o.labels is not None else None
    summary = write_evaluation(
        o.pred, o.gt, output, o.images, labels, o.num_overlays, layout=layout, nsd_tolerance=o.nsd_tolerance
    )
    print(format_summary_table(summary))
    if summary["missing"]:
        print(f"warning: {len(summary['missing'])} case(s) without a prediction scored as empty: {summary['missing']}")
    print(f"wrote {output / 'metrics.csv'} and {output / 'summary.json'}")
    return 0


def check_folders(pred: Path, gt: Path, output: Path) -> None:
    """:class:`InputError` when ``pred`` is ``gt`` (a perfect score of nothing) or ``output`` lies in ``gt``."""
    if not Path(gt).is_dir() or Path(output).is_file():
        return  # write_evaluation names the missing folder or the file in the way
    real_gt = Path(os.path.realpath(gt))
    if Path(os.path.realpath(pred)) == real_gt:
        raise InputError(
            f"--pred {pred} is --gt {gt}: that scores the ground truth against itself; pass the predictions folder"
        )
    real_out = Path(os.path.realpath(output))
    if real_out == real_gt or real_gt in real_out.parents:
        raise InputError(
            f"--output {output} lies inside --gt {gt}; the ground truth is only read: pass another --output"
        )
