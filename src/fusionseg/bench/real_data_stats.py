"""Statistics and Markdown tables of the real-data benchmark (:mod:`fusionseg.bench.real_data`).

Benchmark-only: mean ± std over seeds per (dataset, model), the Dice difference to the MONAI peer, and the
controlled ablation — a model ``NAME+FUSION`` paired with ``NAME`` (its own concatenation skips) seed by
seed, with the paired difference's mean ± std next to each arm's seed-to-seed spread.

Example:
    >>> records = [{"dataset": "d", "model": m, "seed": k, "dice": 0.8 + 0.01 * k, "iterations": 10}
    ...            for m in ("basicunet", "basicunet+dff") for k in range(2)]
    >>> [p["diff_mean"] for p in paired_differences(records)]
    [0.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fusionseg.evaluation.report import format_table

__all__ = ["PEER", "baseline_of", "format_pairs", "format_tables", "paired_differences", "paired_verdict", "summarise"]

PEER = "basicunet"
# Reference numbers measured outside this benchmark (it re-measures the peer in the same run).
REFERENCES = {
    "nuclei2d": "BasicUNet 0.927 ± 0.003 in 180 s",
    "brain3d": "BasicUNet 3D 0.828 in 420 s at 2 mm",
}


def summarise(records: list[dict]) -> list[dict]:
    """Mean ± std (ddof 1) over seeds per (dataset, model): iterations, parameters, per-class means, Δ vs the peer."""
    rows = []
    keys = list(dict.fromkeys((r["dataset"], r["model"]) for r in records))
    for dataset, model in keys:
        runs = [r for r in records if r["dataset"] == dataset and r["model"] == model]
        dice = [r["dice"] for r in runs]
        row = {
            "dataset": dataset,
            "model": model,
            "dice_mean": float(np.mean(dice)),
            "dice_std": float(np.std(dice, ddof=1)) if len(dice) > 1 else 0.0,
            "seeds": len(runs),
            "iterations": float(np.mean([r["iterations"] for r in runs])),
            "train_time_s": float(np.mean([r["train_time_s"] for r in runs])),
            "params_m": runs[0]["params"] / 1e6,
        }
        for key in runs[0]:
            if key.startswith("dice_"):
                row[key] = float(np.mean([r[key] for r in runs]))
        rows.append(row)
    peer = {r["dataset"]: r["dice_mean"] for r in rows if r["model"] == PEER}
    for row in rows:  # the in-run baseline: Dice difference to the peer on the same dataset
        row["diff_vs_peer"] = row["dice_mean"] - peer[row["dataset"]] if row["dataset"] in peer else math.nan
    return rows


def baseline_of(label: str, labels: Sequence[str]) -> str | None:
    """The arm without the module for ``NAME+FUSION`` (``NAME`` or ``NAME+concat``) when it ran, else None."""
    name, _, fusion = label.partition("+")
    if not fusion or fusion == "concat":
        return None
    for candidate in (name, f"{name}+concat"):
        if candidate in labels:
            return candidate
    return None


def paired_differences(records: list[dict]) -> list[dict]:
    """Per dataset and module arm: Dice(with) − Dice(without) per seed, mean ± std, and each arm's seed spread."""
    pairs = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        runs = [r for r in records if r["dataset"] == dataset]
        labels = list(dict.fromkeys(r["model"] for r in runs))
        for label in labels:
            base = baseline_of(label, labels)
            if base is None:
                continue
            by_seed = {r["seed"]: r for r in runs if r["model"] == label}
            ref_by_seed = {r["seed"]: r for r in runs if r["model"] == base}
            seeds = sorted(set(by_seed) & set(ref_by_seed))
            diffs = [by_seed[k]["dice"] - ref_by_seed[k]["dice"] for k in seeds]
            with_dice, base_dice = [by_seed[k]["dice"] for k in seeds], [ref_by_seed[k]["dice"] for k in seeds]
            pair = {
                "dataset": dataset,
                "with": label,
                "without": base,
                "seeds": seeds,
                "diffs": diffs,
                "diff_mean": float(np.mean(diffs)) if diffs else math.nan,
                "diff_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan,
                "spread_with": float(np.std(with_dice, ddof=1)) if len(seeds) > 1 else math.nan,
                "spread_without": float(np.std(base_dice, ddof=1)) if len(seeds) > 1 else math.nan,
                "iterations_with": float(np.mean([by_seed[k]["iterations"] for k in seeds])) if seeds else math.nan,
                "iterations_without": float(np.mean([ref_by_seed[k]["iterations"] for k in seeds]))
                if seeds
                else math.nan,
            }
            pair["verdict"] = paired_verdict(pair)
            pairs.append(pair)
    return pairs


def paired_verdict(pair: dict) -> str:
    """The paired difference in words: larger than the seed-to-seed spread of the arms, or within it."""
    mean, n = pair["diff_mean"], len(pair["diffs"])
    if n < 2 or not math.isfinite(pair["diff_std"]):
        return f"one seed only: {mean:+.4f}, no spread to compare with"
    spread = max(pair["spread_with"], pair["spread_without"])
    se = pair["diff_std"] / math.sqrt(n)
    if abs(mean) > spread and abs(mean) > 2 * se:
        side = "better" if mean > 0 else "worse"
        return f"{side} by more than the seed-to-seed spread (|Δ| {abs(mean):.4f} > spread {spread:.4f}, > 2 s.e.)"
    return f"within the seed-to-seed spread (|Δ| {abs(mean):.4f} vs spread {spread:.4f}, s.e. {se:.4f})"


def format_pairs(pairs: list[dict]) -> str:
    """Markdown table of :func:`paired_differences`."""
    if not pairs:
        return ""
    seeds = sorted({k for p in pairs for k in p["seeds"]})
    return "Paired differences (with − without the module, same seed and budget):\n\n" + format_table(
        [
            "dataset",
            "with",
            "without",
            *[f"Δ seed {k}" for k in seeds],
            "Δ mean ± std",
            "spread with / without",
            "iterations with / without",
            "verdict",
        ],
        [
            [
                p["dataset"],
                p["with"],
                p["without"],
                *[f"{dict(zip(p['seeds'], p['diffs'])).get(k, math.nan):+.4f}" for k in seeds],
                f"{p['diff_mean']:+.4f} ± {p['diff_std']:.4f}",
                f"{p['spread_with']:.4f} / {p['spread_without']:.4f}",
                f"{p['iterations_with']:.0f} / {p['iterations_without']:.0f}",
                p["verdict"],
            ]
            for p in pairs
        ],
    )


def _delta(row: dict) -> str:
    if row["model"] == PEER:
        return "(peer)"
    return "–" if math.isnan(row["diff_vs_peer"]) else f"{row['diff_vs_peer']:+.4f}"


def format_tables(rows: list[dict], budgets: dict[str, float], copy_dice: dict[str, float] | None = None) -> str:
    """Markdown: the main table (every dataset) and a per-class table for multi-class datasets."""
    main = format_table(
        [
            "dataset",
            "model",
            "Dice (mean ± std over seeds)",
            "Δ Dice vs peer",
            "seeds",
            "budget (s)",
            "iterations",
            "params (M)",
        ],
        [
            [
                r["dataset"],
                r["model"] + (" (peer)" if r["model"] == PEER else ""),
                f"{r['dice_mean']:.4f} ± {r['dice_std']:.4f}",
                _delta(r),
                r["seeds"],
                f"{budgets[r['dataset']]:g}",
                f"{r['iterations']:.0f}",
                f"{r['params_m']:.3f}",
            ]
            for r in rows
        ],
    )
    parts = [main]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        ds_rows = [r for r in rows if r["dataset"] == dataset]
        classes = [k for k in ds_rows[0] if k.startswith("dice_") and k not in ("dice_mean", "dice_std")]
        if len(classes) > 1:
            parts.append(
                f"Per-class Dice on {dataset} (mean over seeds):\n\n"
                + format_table(
                    ["model", *[c.removeprefix("dice_") for c in classes]],
                    [[r["model"], *[f"{r[c]:.3f}" for c in classes]] for r in ds_rows],
                )
            )
    notes = [f"- {d}: measured elsewhere: {REFERENCES[d]}." for d in dict.fromkeys(r["dataset"] for r in rows)]
    notes += [
        f"- {d}: the mirrored training label copied onto the test hemisphere (no learning) scores {v:.4f}."
        for d, v in (copy_dice or {}).items()
    ]
    parts.append("\n".join(notes))
    return "\n\n".join(parts)
