"""``fusionseg ablate``: equal-budget comparison of skip fusions (concat, add, DFF, TIF).

Every (fusion, seed) pair trains the same model for the same wall-clock training budget (the LR
schedule ends at the budget), then scores the held-out cases (the dataset's labelled test split,
else the validation split) with sliding-window Dice. Outputs in ``--output``:

- ``ablation_cases.csv``: fusion, seed, case, Dice (mean over foreground classes);
- ``ablation.csv`` / ``ablation.md``: per fusion mean ± std over seeds, iterations reached,
  parameters, and the paired comparison against the reference (concat): per-case Dice averaged
  over seeds, mean paired difference, Wilcoxon signed-rank and paired t-test p-values;
- ``runs/<fusion>_seed<k>/``: each training run.

Rerun with the same options into the same ``--output`` (e.g. after the job was killed), every run
continues from its newest checkpoint: finished runs are only scored again, an interrupted one trains
for the rest of its budget, the others start (delete ``runs/`` to start the study over).

Example:
    $ fusionseg ablate --data phantoms --model unet --fusions concat,add,dff,tif --num-seeds 3 --time-budget 60
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from fusionseg.errors import InputError
from fusionseg.files import write_csv_atomic, write_text_atomic
from fusionseg.training.config import TrainConfig

__all__ = [
    "MAX_SEEDS",
    "compare_paired",
    "format_ablation_table",
    "run_ablation",
    "summarise_ablation",
    "train_and_score",
    "write_ablation",
]

MAX_SEEDS = 100  # fusions × seeds × --time-budget is the run time: a typo of 10⁸ seeds would never end


def compare_paired(values: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Paired comparison over the cases both dicts score: mean difference (values − reference) and p-values.

    Wilcoxon signed-rank (two-sided; 1.0 when every difference is 0) and paired t-test p-values;
    NaN with fewer than 2 cases.
    """
    from scipy import stats

    cases = sorted(set(values) & set(reference))
    diffs = np.array([values[c] - reference[c] for c in cases], dtype=float)
    out = {"n": len(cases), "mean_diff": float(diffs.mean()) if diffs.size else math.nan}
    if diffs.size < 2:
        return {**out, "p_wilcoxon": math.nan, "p_ttest": math.nan}
    if np.allclose(diffs, 0):
        return {**out, "p_wilcoxon": 1.0, "p_ttest": 1.0}
    p_w = float(stats.wilcoxon(diffs).pvalue)
    p_t = float(stats.ttest_rel([values[c] for c in cases], [reference[c] for c in cases]).pvalue)
    return {**out, "p_wilcoxon": p_w, "p_ttest": p_t if math.isfinite(p_t) else math.nan}


def summarise_ablation(records: list[dict], runs: list[dict], reference: str) -> list[dict]:
    """Rows per fusion: mean/std over seeds of the mean case Dice + paired comparison to ``reference``."""
    fusions = list(dict.fromkeys(r["fusion"] for r in runs))

    def per_case(fusion: str) -> dict[str, float]:
        by_case: dict[str, list[float]] = {}
        for r in records:
            if r["fusion"] == fusion:
                by_case.setdefault(r["case"], []).append(r["dice"])
        return {c: float(np.mean(v)) for c, v in by_case.items()}

    ref_cases = per_case(reference)
    rows = []
    for fusion in fusions:
        seed_means = [
            float(np.mean([r["dice"] for r in records if r["fusion"] == fusion and r["seed"] == run["seed"]]))
            for run in runs
            if run["fusion"] == fusion
        ]
        fusion_runs = [r for r in runs if r["fusion"] == fusion]
        cmp = compare_paired(per_case(fusion), ref_cases) if fusion != reference else {}
        rows.append(
            {
                "fusion": fusion,
                "dice_mean": float(np.mean(seed_means)),
                "dice_std": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else 0.0,
                "seeds": len(seed_means),
                "iterations": float(np.mean([r["steps"] for r in fusion_runs])),
                "params_m": fusion_runs[0]["params"] / 1e6,
                "diff_vs_ref": cmp.get("mean_diff", 0.0 if fusion == reference else math.nan),
                "p_wilcoxon": cmp.get("p_wilcoxon", math.nan),
                "p_ttest": cmp.get("p_ttest", math.nan),
                "n_cases": cmp.get("n", len(ref_cases)),
            }
        )
    return rows


def _fmt(value: float, spec: str = ".4f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def format_ablation_table(rows: list[dict], reference: str, budget: float) -> str:
    """Markdown table of :func:`summarise_ablation` rows with a note on the protocol."""
    from fusionseg.evaluation.report import format_table

    table = format_table(
        [
            "fusion",
            "Dice (mean ± std over seeds)",
            "Δ Dice vs " + reference,
            "p (Wilcoxon)",
            "p (t-test)",
            "iterations in budget",
            "params (M)",
        ],
        [
            [
                r["fusion"],
                f"{_fmt(r['dice_mean'])} ± {_fmt(r['dice_std'])}",
                "(reference)" if r["fusion"] == reference else f"{r['diff_vs_ref']:+.4f}",
                _fmt(r["p_wilcoxon"], ".3g"),
                _fmt(r["p_ttest"], ".3g"),
                f"{r['iterations']:.0f}",
                f"{r['params_m']:.3f}",
            ]
            for r in rows
        ],
    )
    return (
        f"{table}\n\nEqual training budget of {budget:g} s per run; Dice = mean over foreground classes per case; "
        f"paired tests over {rows[0]['n_cases'] if rows else 0} held-out cases (Dice averaged over seeds per case)."
    )


def run_ablation(config: TrainConfig, fusions: Sequence[str], num_seeds: int, command: str = "") -> int:
    """``fusionseg ablate``: train ``config`` with each of ``fusions`` for seeds ``config.seed``, ... (``num_seeds``)
    for ``config.time_budget`` seconds each into ``config.output/runs``, score them and write the tables
    (module docstring) → exit status 0. ``command``: the command line, quoted in ``ablation.md``."""
    from fusionseg.files import folder_lock
    from fusionseg.fusion import list_fusions
    from fusionseg.runtime.devices import set_threads

    fusions = list(fusions)
    unknown = [f for f in fusions if f not in list_fusions()]
    if unknown or not fusions:
        raise InputError(f"--fusions: unknown {unknown or 'empty list'}; choose from {', '.join(list_fusions())}")
    twice = sorted({f for f in fusions if fusions.count(f) > 1})
    if twice:
        raise InputError(f"--fusions lists {', '.join(twice)} more than once; name each fusion once")
    if num_seeds > MAX_SEEDS:
        raise InputError(f"--num-seeds {num_seeds} is more than a comparison needs (at most {MAX_SEEDS}); e.g. 3")
    budget = config.time_budget
    if budget is None:
        raise InputError("--time-budget is required: the training seconds every run gets (e.g. --time-budget 60)")
    threads, reason = set_threads(config.threads)  # once: every run gets the same thread count
    print(f"CPU threads: {threads} ({reason}), for every run")
    base = replace(config, time_budget=None, threads=threads)
    base.check()  # before the folder lock creates --output (e.g. inside --data)
    seeds = [base.seed + k for k in range(num_seeds)]
    output = Path(base.output)
    with folder_lock(output, "ablation folder"):
        rows, records, reference = train_and_score(base, fusions, seeds, budget, output)
        table = format_ablation_table(rows, reference, budget)
        report = f"# Fusion ablation ({base.model})\n\n`{command}`\n\n{table}\n"
        written = write_ablation(output, rows, records, report)
    print(table)
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def train_and_score(
    base: TrainConfig, fusions: list[str], seeds: list[int], budget: float, output: Path, eval_overlap: float = 0.5
) -> tuple[list[dict], list[dict], str]:
    """Train and score every (fusion, seed) → (rows per fusion, per-case records, reference fusion).

    A run that exists in ``output/runs`` continues (finished: scored only)."""
    from monai.data import Dataset

    from fusionseg import data
    from fusionseg.checkpoints.loading import load_model
    from fusionseg.data.preprocessing import own_preprocessing
    from fusionseg.evaluation.validation_dice import case_dice
    from fusionseg.runtime.devices import pick_device
    from fusionseg.training.trainer import split_cases, train

    info = data.scan_dataset(base.data)
    labelled_test = [c for c in info.test_cases if c.label is not None]
    records, runs = [], []
    # Seeds outside, fusions inside: a change of machine load during the study hits every fusion alike.
    for seed in seeds:
        for fusion in fusions:
            run_dir = output / "runs" / f"{fusion}_seed{seed}"
            config = replace(base, fusion=fusion, seed=seed, time_budget=budget, output=run_dir, resume=True)
            print(f"== fusion {fusion}, seed {seed}: training for {budget:g} s → {run_dir}")
            best = train(config)
            model, stored, _ = load_model(best, pick_device(base.device))
            pre = own_preprocessing(stored, best)
            eval_cases = labelled_test or split_cases(list(info.cases), base.val_fraction, seed)[1]
            if not eval_cases:
                raise InputError(f"{base.data} has no labelled test cases and too few cases for a validation split")
            dataset = Dataset([data.case_dict(c) for c in eval_cases], data.eval_transforms(pre))
            items = [dataset[i] for i in range(len(dataset))]
            scores = case_dice(model, items, pre, next(model.parameters()).device, overlap=eval_overlap)
            for case, score in zip(eval_cases, scores):
                records.append({"fusion": fusion, "seed": seed, "case": case.case_id, "dice": score})
            summary = json.loads((run_dir / "train_summary.json").read_text())
            runs.append(
                {
                    "fusion": fusion,
                    "seed": seed,
                    "steps": summary["steps"],
                    "params": sum(p.numel() for p in model.parameters()),
                }
            )
            print(f"   mean Dice {np.mean(scores):.4f} over {len(scores)} cases after {summary['steps']} iterations")
    reference = "concat" if "concat" in fusions else fusions[0]
    return summarise_ablation(records, runs, reference), records, reference


def write_ablation(output: Path, rows: list[dict], records: list[dict], report: str) -> list[Path]:
    """``ablation.csv`` (rows per fusion), ``ablation_cases.csv`` (per-case records) and ``ablation.md``
    (``report``) in ``output``, each written atomically → their paths."""
    return [
        write_csv_atomic(output / "ablation.csv", rows, list(rows[0])),
        write_csv_atomic(output / "ablation_cases.csv", records, list(records[0])),
        write_text_atomic(output / "ablation.md", report),
    ]
