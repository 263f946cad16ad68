"""Training-loop overhead: ``fusionseg bench train-loop [--cases phantom2d aniso3d] [--iterations N]``.

For each case, in one run, with the same model, patch, batch and threads, each arm in a fresh
process (so its peak resident memory is its own), arms alternating over ``--repeats`` rounds:

- **loop**: the real training loop (:class:`fusionseg.training.trainer.Trainer`: patches streamed from
  the preprocessed cache, augmentation, loss with deep supervision, optimizer, scheduler, logging) — seconds
  per iteration from one iteration's start to the next's (data loading included);
- **bare step**: forward + the same loss + backward + the same optimizer step on a random batch of
  the same shape, nothing else — what the model itself costs;
- **bare, glibc default**: the bare step without :func:`fusionseg.runtime.devices.tune_cpu_allocator`
  (the allocator policy ``train`` applies), to show what that policy is worth.

Printed: median seconds per iteration of each arm (first iterations skipped as warm-up), peak
resident memory of each process, and the ratios loop / bare step. Cases:

- ``phantom2d``: the demo's problem (2D phantoms 96², U-Net + DFF features 16…128, batch 4);
- ``aniso3d``: an anisotropic MRI-like study (256×256×25 voxels at 0.78×0.78×6.5 mm, NRRD,
  nnU-Net layout, 4 cases), U-Net + DFF with deep supervision, automatic patch (128×128×32), batch 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CASES", "Case", "build_parser", "main", "make_anisotropic_dataset"]


@dataclass(frozen=True)
class Case:
    """A benchmark problem: dataset maker, model, batch and patch."""

    name: str
    description: str
    spatial_dims: int
    model_kwargs: dict = field(default_factory=dict)
    batch_size: int = 2
    patch_size: tuple[int, ...] | None = None  # None: the automatic patch of build_preprocessing
    deep_supervision: bool = False


CASES = {
    "phantom2d": Case(
        "phantom2d", "2D phantoms 96², U-Net+DFF 16…128, batch 4", 2, {"features": [16, 32, 64, 128]}, 4, (96, 96)
    ),
    "aniso3d": Case(
        "aniso3d",
        "256×256×25 at 0.78×0.78×6.5 mm, U-Net+DFF deep supervision, batch 2",
        3,
        {},
        2,
        None,
        True,
    ),
}


def make_anisotropic_dataset(root: Path, num_cases: int = 4, seed: int = 0) -> Path:
    """An nnU-Net-layout NRRD dataset shaped like a clinical brain MRI study (256×256×25 at 0.78×0.78×6.5 mm)."""
    import nrrd
    import numpy as np

    from fusionseg.data.phantoms import phantom

    spacing = (0.78, 0.78, 6.5)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag(spacing),
        "space origin": np.zeros(3),
        "kinds": ["domain"] * 3,
    }
    for i in range(num_cases):
        image, label = phantom(3, (256, 256, 25), 2, rng)
        nrrd.write(str(root / "imagesTr" / f"case_{i:03d}_0000.nrrd"), (image * 1000).astype(np.int16), header)
        nrrd.write(str(root / "labelsTr" / f"case_{i:03d}.nrrd"), label.astype(np.uint8), header)
    meta = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": num_cases,
        "file_ending": ".nrrd",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _make_dataset(case: Case, root: Path) -> Path:
    from fusionseg.data import make_phantom_dataset

    if case.name == "aniso3d":
        return make_anisotropic_dataset(root)
    return make_phantom_dataset(root, spatial_dims=2, num_train=24, num_test=0, size=(96, 96), num_classes=3)


# ------------------------------------------------------------------------------------------- workers


def _worker_loop(case: Case, data: Path, iterations: int, threads: int) -> dict:
    from fusionseg.training.config import TrainConfig
    from fusionseg.training.trainer import Trainer

    starts: list[float] = []

    class TimedTrainer(Trainer):
        def train_step(self, batch):
            starts.append(time.perf_counter())
            self.batch_shape = tuple(batch["image"].shape)
            return super().train_step(batch)

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            data=data,
            output=Path(out),
            model="unet",
            fusion="dff",
            model_kwargs=case.model_kwargs,
            deep_supervision=case.deep_supervision,
            epochs=1,
            iters_per_epoch=iterations + 1,
            batch_size=case.batch_size,
            patch_size=case.patch_size,
            val_fraction=0.0,
            progress=False,
            device="cpu",
            threads=threads,
        )
        trainer = TimedTrainer(config, log=lambda *a, **k: None)
        trainer.run()
    steps = [b - a for a, b in itertools.pairwise(starts)]
    return {
        "s_per_it": steps,
        "batch_shape": list(trainer.batch_shape),
        "patch": list(trainer.pre.patch_size or ()),
        "params": sum(p.numel() for p in trainer.model.parameters()),
    }


def _worker_bare(case: Case, shape: list[int], iterations: int, threads: int, tune: bool) -> dict:
    import torch

    from fusionseg.nets.registry import create_model
    from fusionseg.runtime.devices import tune_cpu_allocator
    from fusionseg.training.losses import DeepSupervisedDiceCE
    from fusionseg.training.optim import build_optimizer

    torch.set_num_threads(threads)
    if tune:
        tune_cpu_allocator()
    torch.manual_seed(0)
    model = create_model(
        "unet",
        in_channels=shape[1],
        out_channels=3 if case.spatial_dims == 2 else 2,
        spatial_dims=case.spatial_dims,
        fusion="dff",
        deep_supervision=case.deep_supervision,
        **case.model_kwargs,
    )
    optimizer = build_optimizer(model.parameters(), "sgd")
    loss_fn = DeepSupervisedDiceCE()
    x = torch.randn(shape)
    y = torch.randint(0, 3 if case.spatial_dims == 2 else 2, (shape[0], 1, *shape[2:]))
    times = []
    for _ in range(iterations + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return {"s_per_it": times[1:]}


def _worker(argv: list[str]) -> int:
    import resource

    arm, name, data, shape, iterations, threads = argv[0], argv[1], Path(argv[2]), argv[3], int(argv[4]), int(argv[5])
    case = CASES[name]
    if arm == "loop":
        result = _worker_loop(case, data, iterations, threads)
    else:
        result = _worker_bare(case, json.loads(shape), iterations, threads, tune=arm == "bare")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))
    return 0


def _run_arm(arm: str, case: Case, data: Path, shape: list[int] | None, iterations: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "fusionseg.bench.train_loop", "--worker", arm, case.name, str(data)]
    cmd += [json.dumps(shape or []), str(iterations), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{arm} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------------------------------- driver


def run_case(case: Case, iterations: int, repeats: int, threads: int, workdir: Path) -> dict:
    """Alternate the arms ``repeats`` times → medians per arm and the ratios."""
    data = _make_dataset(case, workdir / case.name)
    arms: dict[str, list[dict]] = {"loop": [], "bare": [], "bare_default": []}
    shape = None
    for _ in range(repeats):
        loop = _run_arm("loop", case, data, None, iterations, threads)
        arms["loop"].append(loop)
        shape = loop["batch_shape"]
        arms["bare"].append(_run_arm("bare", case, data, shape, iterations, threads))
        arms["bare_default"].append(_run_arm("bare_default", case, data, shape, iterations, threads))
    out = {"case": case, "shape": shape, "patch": arms["loop"][0]["patch"], "params": arms["loop"][0]["params"]}
    for arm, runs in arms.items():
        out[arm] = {
            "s_per_it": statistics.median(t for r in runs for t in r["s_per_it"][1:]),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        }
    return out


HEADER = [
    "case",
    "batch × patch",
    "loop s/it",
    "bare step s/it",
    "loop / bare",
    "loop peak RSS MiB",
    "bare peak RSS MiB",
    "RSS loop / bare",
    "bare, glibc default s/it",
]


def _row(r: dict) -> list:
    loop, bare, default = r["loop"], r["bare"], r["bare_default"]
    shape = r["shape"]
    return [
        r["case"].name,
        f"{shape[0]} × {'×'.join(map(str, shape[2:]))}",
        f"{loop['s_per_it']:.3g}",
        f"{bare['s_per_it']:.3g}",
        f"{loop['s_per_it'] / bare['s_per_it']:.2f}×",
        f"{loop['peak_rss_mb']:.0f}",
        f"{bare['peak_rss_mb']:.0f}",
        f"{loop['peak_rss_mb'] / bare['peak_rss_mb']:.2f}×",
        f"{default['s_per_it']:.3g}",
    ]


def build_parser(prog: str = "fusionseg bench train-loop") -> argparse.ArgumentParser:
    """The options of ``fusionseg bench train-loop``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="default: all")
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per arm and round (default 6)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of alternating arms (default 2)")
    parser.add_argument("--threads", default="auto", help="CPU threads of every arm: auto (idle cores) or a number")
    return parser


def main(argv: list[str] | None = None, prog: str = "fusionseg bench train-loop") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    from fusionseg.evaluation.report import format_table
    from fusionseg.runtime.devices import choose_threads

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.iterations < 2 or args.repeats < 1:
        parser.error("--iterations must be ≥ 2 and --repeats ≥ 1")
    threads, reason = choose_threads(args.threads)
    import torch

    print(f"torch {torch.__version__}, {threads} CPU threads ({reason}), {args.iterations} iterations × {args.repeats}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.cases:
            result = run_case(CASES[name], args.iterations, args.repeats, threads, Path(work))
            rows.append(_row(result))
            print(f"  measured {name}: {CASES[name].description}", file=sys.stderr, flush=True)
    print(format_table(HEADER, rows))
    print(
        "loop = fusionseg's training loop (data, augmentation, loss, step); bare step = forward + loss + backward + "
        "optimizer step on a random batch of the same shape; both with the allocator policy of `train`. "
        "Medians over iterations after the first of each process."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
