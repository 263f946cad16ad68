"""``fusionseg demo``: real nuclei image → train a small DFF U-Net → predict held-out tiles → evaluate → report.

The default data is the real 512×512 fluorescence field shipped with the package (2018 Data Science
Bowl; ``fusionseg.resources``), cut into a 4×4 grid of 128×128 tiles: the 4 tiles on the grid's
diagonal are the test set, the 12 others train (2 of them held out for validation). ``phantoms=True``
settings use synthetic phantoms instead. About 1.5 minutes on a 2-core CPU (at most 60 s of it
training), no downloads. Everything lands in one folder (default ``./fusionseg_demo``)::

    data/          the tiles (images/ + masks/, test/images + test/masks) or the phantoms
    run/           best.pt, last.pt, log.csv, learning_curve.png, train_summary.json
    predictions/   predicted masks of the test tiles (PNG, input geometry)
    evaluation/    metrics.csv, summary.json, overlays/
    report.md      Dice table, training summary, learning curve and overlays

Example:
    $ fusionseg demo                 # the real nuclei image
    $ fusionseg demo --quick         # a seconds-long smoke run of the same pipeline
    $ fusionseg demo --phantoms      # synthetic phantoms
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from fusionseg.errors import InputError

__all__ = [
    "DEMO_ENTRIES",
    "NUCLEI",
    "NUCLEI_QUICK",
    "PHANTOMS",
    "PHANTOMS_QUICK",
    "DemoSettings",
    "check_demo_folder",
    "demo_settings",
    "run_demo",
    "train_predict_evaluate",
]


@dataclass(frozen=True)
class DemoSettings:
    """The demo's data and the size of its training run.

    ``data``: ``"nuclei"`` (the shipped real image cut into ``tile``×``tile`` tiles) or ``"phantoms"``
    (``num_train`` + ``num_test`` synthetic images of ``size``, 3 classes with background).
    ``pass_dice``: below this mean test Dice :func:`run_demo` notes that the machine may have been too busy.
    """

    data: str = "nuclei"
    tile: int = 128
    size: tuple[int, ...] = (96, 96)
    num_train: int = 24
    num_test: int = 6
    features: tuple[int, ...] = (16, 32, 64, 128)
    patch_size: tuple[int, ...] = (128, 128)
    batch_size: int = 4
    epochs: int = 12
    iters_per_epoch: int = 25
    lr: float = 3e-3
    time_budget: float = 60.0
    val_every: int = 3
    pass_dice: float = 0.8

    def __post_init__(self) -> None:
        if self.data not in ("nuclei", "phantoms"):
            raise ValueError(f"data must be 'nuclei' or 'phantoms', got {self.data!r}")


NUCLEI = DemoSettings()
NUCLEI_QUICK = DemoSettings(
    features=(8, 16), patch_size=(64, 64), batch_size=2, epochs=2, iters_per_epoch=3, time_budget=20.0, val_every=1
)
PHANTOMS = DemoSettings(data="phantoms", patch_size=(96, 96))
PHANTOMS_QUICK = DemoSettings(
    data="phantoms",
    size=(48, 48),
    num_train=4,
    num_test=2,
    features=(8, 16),
    patch_size=(48, 48),
    batch_size=2,
    epochs=2,
    iters_per_epoch=3,
    time_budget=20.0,
    val_every=1,
)


def demo_settings(phantoms: bool = False, quick: bool = False) -> DemoSettings:
    """The settings of ``fusionseg demo [--phantoms] [--quick]``."""
    if phantoms:
        return PHANTOMS_QUICK if quick else PHANTOMS
    return NUCLEI_QUICK if quick else NUCLEI


def _build_data(settings: DemoSettings, folder: Path, seed: int) -> tuple[Path, str]:
    """The demo's dataset folder and a one-line description of it for the report."""
    if settings.data == "nuclei":
        from fusionseg.data.real import build_nuclei2d_tiles

        root = build_nuclei2d_tiles(folder, tile=settings.tile)
        grid = 512 // settings.tile
        return root, (
            f"the real 512×512 fluorescence nuclei field shipped with fusionseg (2018 Data Science Bowl, "
            f"`fusionseg/resources/data/nuclei2d`) cut into {grid}×{grid} tiles of {settings.tile}×{settings.tile}: "
            f"the {grid} tiles on the diagonal (`tile_rK_cK`) are the test set, the other {grid * grid - grid} "
            f"train (a few of them held out for validation); classes: background, nucleus"
        )
    from fusionseg.data import make_phantom_dataset

    root = make_phantom_dataset(
        folder,
        spatial_dims=2,
        num_train=settings.num_train,
        num_test=settings.num_test,
        size=settings.size,
        num_classes=3,
        seed=seed,
    )
    return root, (
        f"{settings.num_train} training + {settings.num_test} test synthetic phantoms "
        f"(2D, {'×'.join(map(str, settings.size))}, 3 classes incl. background)"
    )


def training_table(summary: dict, time_budget: float) -> str:
    """The run's ``train_summary.json`` as a short Markdown table (epochs, iterations, time, best val Dice)."""
    from fusionseg.evaluation.report import format_table

    best = summary.get("best_val_dice")
    stopped = f"time budget ({time_budget:g} s)" if summary.get("out_of_time") else "epoch limit"
    rows = [
        ["epochs", summary["epochs"]],
        ["iterations", summary["steps"]],
        ["training time", f"{summary['train_time_s']:.1f} s"],
        ["stopped by", stopped],
        ["best validation Dice", "–" if best is None else f"{best:.4f}"],
        ["training cases", len(summary.get("train_cases", []))],
        ["validation cases", ", ".join(summary.get("val_cases", [])) or "–"],
    ]
    return format_table(["training", "value"], rows)


def run_demo(
    output: Path = Path("fusionseg_demo"),
    *,
    phantoms: bool = False,
    quick: bool = False,
    fusion: str = "dff",
    seed: int = 0,
    threads: str | int = "auto",
    device: str = "auto",
    progress: bool = True,
) -> int:
    """``fusionseg demo``: the whole demo in ``output`` (a new folder, or one an earlier demo wrote), its Dice
    table and timings printed → exit status 0."""
    from fusionseg.files import folder_lock
    from fusionseg.runtime.devices import set_threads

    settings = demo_settings(phantoms=phantoms, quick=quick)
    threads, reason = set_threads(threads)
    data = "synthetic phantoms" if phantoms else "real nuclei image"
    run = "quick" if quick else "full"
    print(f"fusionseg demo → {output} ({data}, {run} run, {threads} CPU thread(s): {reason})")
    check_demo_folder(output)
    with folder_lock(output, "demo folder"):
        result = train_predict_evaluate(output, settings, fusion=fusion, seed=seed, progress=progress, device=device)
    print()
    print(result["table"])
    print(
        f"\nmean test Dice {result['mean_dice']:.4f} | train {result['train_s']:.0f} s, "
        f"predict {result['predict_s']:.1f} s, total {result['total_s']:.0f} s | report: {result['report']}"
    )
    if not quick and result["mean_dice"] < settings.pass_dice:
        print(
            f"note: the mean Dice is below {settings.pass_dice}; the machine may have been too busy for the time budget"
        )
    return 0


DEMO_ENTRIES = {"data", "run", "predictions", "evaluation", "report.md", ".fusionseg-lock"}


def check_demo_folder(output: Path) -> None:
    """:class:`InputError` when ``output`` holds files an earlier demo did not write (the demo replaces its own)."""
    if not output.is_dir():
        return
    foreign = sorted(p.name for p in output.iterdir() if p.name not in DEMO_ENTRIES)
    report = output / "report.md"
    if not foreign and report.is_file():
        try:
            foreign = [] if "fusionseg demo" in report.read_text(errors="replace") else ["report.md"]
        except OSError:
            foreign = ["report.md"]
    if foreign:
        raise InputError(
            f"--output {output} already holds files the demo did not write ({', '.join(foreign[:3])}); "
            "pass a new or empty folder"
        )


def train_predict_evaluate(
    output: Path,
    settings: DemoSettings = NUCLEI,
    model: str = "unet",
    fusion: str = "dff",
    seed: int = 0,
    progress: bool = True,
    device: str = "auto",
) -> dict:
    """Run the whole demo in ``output`` → summary dict (``mean_dice``, timings, paths)."""
    from fusionseg.checkpoints.loading import load_model
    from fusionseg.evaluation.evaluate import format_summary_table, write_evaluation
    from fusionseg.evaluation.report import write_markdown_report
    from fusionseg.inference.inputs import find_inputs
    from fusionseg.inference.predict_files import predict_files
    from fusionseg.runtime.devices import pick_device
    from fusionseg.training.config import TrainConfig
    from fusionseg.training.trainer import train

    start = time.perf_counter()
    output = Path(output)
    data_dir, data_text = _build_data(settings, output / "data", seed)
    config = TrainConfig(
        data=data_dir,
        output=output / "run",
        model=model,
        fusion=fusion,
        model_kwargs={"features": list(settings.features)} if model == "unet" else {},
        epochs=settings.epochs,
        iters_per_epoch=settings.iters_per_epoch,
        time_budget=settings.time_budget,
        batch_size=settings.batch_size,
        patch_size=settings.patch_size,
        optimizer="adamw",
        lr=settings.lr,
        val_every=settings.val_every,
        val_fraction=0.15,
        seed=seed,
        progress=progress,
        device=device,
    )
    best = train(config)
    trained = time.perf_counter()

    dev = pick_device(device)
    net, pre, _ = load_model(best, dev)
    test_images, test_labels = data_dir / "test" / "images", data_dir / "test" / "masks"
    cases = find_inputs(test_images, pre.in_channels)
    pred_dir = output / "predictions"
    _, failed = predict_files(net, pre, cases, pred_dir, device=dev, progress=False)
    if failed:
        raise InputError(f"demo prediction failed for {failed}")
    predicted = time.perf_counter()

    summary = write_evaluation(pred_dir, test_labels, output / "evaluation", images=test_images, num_overlays=1)
    table = format_summary_table(summary)
    mean_dice = float(summary["mean"]["dice"])
    train_summary = json.loads((output / "run" / "train_summary.json").read_text())
    overlays = "\n".join(f"![{Path(p).stem}](evaluation/{p})" for p in summary.get("overlays", []))
    what = "a real fluorescence nuclei image" if settings.data == "nuclei" else "synthetic phantoms"
    flags = (" --phantoms" if settings.data == "phantoms" else "") + (
        " --quick" if settings in (NUCLEI_QUICK, PHANTOMS_QUICK) else ""
    )
    write_markdown_report(
        output / "report.md",
        f"fusionseg demo: U-Net with DFF fusion on {what}",
        [
            (
                "Setup",
                f"- data: {data_text}\n"
                f"- model: `{model}` fusion `{fusion}` features {list(settings.features)}, AdamW lr {settings.lr:g}, "
                f"patch {'×'.join(map(str, settings.patch_size))}, batch {settings.batch_size}, "
                f"≤ {settings.epochs}×{settings.iters_per_epoch} iterations or {settings.time_budget:g} s\n"
                f"- reproduce: `fusionseg demo{flags} --output {output}`",
            ),
            ("Test Dice (held-out cases)", table + f"\n\nMean foreground Dice: **{mean_dice:.4f}**"),
            (
                "Training",
                training_table(train_summary, settings.time_budget)
                + "\n\nPer epoch: `run/log.csv`.\n\n![learning curve](run/learning_curve.png)",
            ),
            ("Overlays (worst and best test case)", overlays or "(none)"),
        ],
    )
    end = time.perf_counter()
    return {
        "mean_dice": mean_dice,
        "table": table,
        "train_s": trained - start,
        "predict_s": predicted - trained,
        "total_s": end - start,
        "report": output / "report.md",
        "summary": summary,
    }
