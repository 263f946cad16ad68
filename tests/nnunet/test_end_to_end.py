"""Real nnU-Net v2 on CPU with fusionseg's trainers: plan → train → nnUNetv2_predict → fusionseg predict.

Two phantom datasets in ``nnUNet_raw`` — 3D (5 training + 1 test volume of 32³, NIfTI) and 2D
(5 + 1 images of 64², PNG), 3 classes each — are planned and preprocessed once by
``nnUNetv2_plan_and_preprocess``. ``fusionseg nnunet install`` makes the
trainers visible to nnU-Net; a test-only module next to it adds ``<trainer>Tiny`` subclasses that
train 1 epoch of 2 iterations. Every step runs nnU-Net's own commands in subprocesses; the
fusionseg side (``import-weights`` + ``predict``) must reproduce ``nnUNetv2_predict``'s labels and
probabilities on the same checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (install it as docs/nnunet.md says)")

import fusionseg
from fusionseg.cli import main as fusionseg_main
from fusionseg.nnunet.install import SHIM_NAME, default_target, install, uninstall
from fusionseg.nnunet.phantoms import make_nnunet_phantoms

DATASETS = {3: ("901", "Dataset901_Phantom3D"), 2: ("902", "Dataset902_Phantom2D")}
TINY_MODULE = "nnUNetTrainer_fusionseg_testonly.py"  # sorts after the shim, before nnU-Net's subfolders
TINY_SOURCE = '''"""Test-only (tests/nnunet/test_end_to_end.py): fusionseg trainers cut to 1 epoch of 2 iterations."""
from fusionseg.nnunet.trainers import TRAINERS


def _tiny(base):
    class Tiny(base):
        def __init__(self, plans, configuration, fold, dataset_json, device=base.__init__.__defaults__[0]):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1

    Tiny.__name__ = Tiny.__qualname__ = base.__name__ + "Tiny"
    return Tiny


for _name, _cls in TRAINERS.items():
    globals()[_name + "Tiny"] = _tiny(_cls)
'''

# trainer -> (dataset dims, configuration, registry name fusionseg stores the imported network under)
TRAINED = {
    "nnUNetTrainerDNetSmall": (3, "3d_fullres", "dnet_small"),
    "nnUNetTrainerDFF": (3, "3d_fullres", "nnunet_planned"),
    "nnUNetTrainerTIF": (3, "3d_fullres", "nnunet_planned"),
    "nnUNetTrainerDSTransUNetSmall": (2, "2d", "ds_transunet_small"),
}
LABELS = {"background": 0, "class1": 1, "class2": 2}


def _command(name: str) -> str:
    """An nnU-Net console script of this Python's environment."""
    script = Path(sys.executable).parent / name
    if not script.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return str(script)


class Project:
    """nnU-Net folders in a temporary directory and the environment that points nnU-Net at them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        src = str(Path(fusionseg.__file__).resolve().parents[1])  # this checkout's fusionseg in subprocesses too
        self.env = {
            **os.environ,
            "nnUNet_raw": str(root / "raw"),
            "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results"),
            "nnUNet_def_n_proc": "1",  # worker pools of 1 (validation export, postprocessing)
            "nnUNet_compile": "false",
            "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        self.env.pop("nnUNet_extTrainer", None)
        self.trained: set[str] = set()

    def run(self, *args: str, **env: str) -> str:
        proc = subprocess.run(
            [_command(args[0]), *args[1:]], env={**self.env, **env}, capture_output=True, text=True, timeout=900
        )
        if proc.returncode:
            pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        return proc.stdout

    def raw(self, dims: int) -> Path:
        return self.root / "raw" / DATASETS[dims][1]

    def model_folder(self, trainer: str) -> Path:
        dims, configuration, _ = TRAINED[trainer]
        return self.root / "results" / DATASETS[dims][1] / f"{trainer}Tiny__nnUNetPlans__{configuration}"

    def train(self, trainer: str) -> Path:
        """``nnUNetv2_train`` fold 0 of ``<trainer>Tiny`` (once per module) → its checkpoint_final.pth."""
        dims, configuration, _ = TRAINED[trainer]
        if trainer not in self.trained:
            # nnUNet_n_proc_DA=0: augmentation in this process (planning must not see it: it sets 0 threads)
            self.run(
                "nnUNetv2_train", DATASETS[dims][0], configuration, "0", "-tr", f"{trainer}Tiny", "-device", "cpu",
                "--npz", nnUNet_n_proc_DA="0",
            )  # fmt: skip
            self.trained.add(trainer)
        return self.model_folder(trainer) / "fold_0" / "checkpoint_final.pth"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    target = default_target()
    if not os.access(target, os.W_OK):
        pytest.skip(f"nnU-Net's trainer folder {target} is read-only")
    had_shim = (target / SHIM_NAME).exists()
    proj = Project(root)
    make_nnunet_phantoms(proj.raw(3), spatial_dims=3, size=(32, 32, 32))
    make_nnunet_phantoms(proj.raw(2), spatial_dims=2, size=(64, 64))
    ids = [DATASETS[3][0], DATASETS[2][0]]
    proj.run("nnUNetv2_plan_and_preprocess", "-d", *ids, "-c", "2d", "3d_fullres", "-np", "1", "-npfp", "1")
    install()  # what `fusionseg nnunet install` does
    (target / TINY_MODULE).write_text(TINY_SOURCE)
    try:
        yield proj
    finally:
        (target / TINY_MODULE).unlink(missing_ok=True)
        if not had_shim:
            uninstall()


def _image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(array, affine) of a NIfTI file, (array, None) of a PNG."""
    if path.name.endswith(".png"):
        from PIL import Image

        return np.asarray(Image.open(path)), None
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _assert_same_geometry(pred: tuple, source: tuple) -> None:
    assert pred[0].shape == source[0].shape
    if source[1] is not None:
        np.testing.assert_allclose(pred[1], source[1], atol=1e-5)


# The default suite runs the D-Net and DFF trainers end to end (each network family and nnU-Net's planned
# U-Net); TIF and DS-TransUNet take the same path and run with -m slow (their trainers have unit tests).
_HEAVY = {"nnUNetTrainerTIF", "nnUNetTrainerDSTransUNetSmall"}


@pytest.mark.parametrize("trainer", [pytest.param(t, marks=pytest.mark.slow) if t in _HEAVY else t for t in TRAINED])
def test_trainer_runs_in_nnunet_and_fusionseg_predicts_the_same(project, tmp_path, trainer):
    dims, configuration, stored_as = TRAINED[trainer]
    checkpoint = project.train(trainer)
    assert checkpoint.is_file()
    summary = json.loads((checkpoint.parent / "validation" / "summary.json").read_text())
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0  # nnU-Net's own validation ran on our network
    plans = json.loads((project.model_folder(trainer) / "plans.json").read_text())
    multiple = {"dnet_small": 32, "ds_transunet_small": 64}.get(stored_as, 1)
    assert all(s % multiple == 0 for s in plans["configurations"][configuration]["patch_size"])

    images = project.raw(dims) / "imagesTs"
    nn_out, fs_out = tmp_path / "nnunet", tmp_path / "fusionseg"
    project.run(
        "nnUNetv2_predict", "-i", str(images), "-o", str(nn_out), "-d", DATASETS[dims][0], "-c", configuration,
        "-f", "0", "-tr", f"{trainer}Tiny", "-device", "cpu", "-npp", "1", "-nps", "1", "--save_probabilities",
    )  # fmt: skip
    ending = ".nii.gz" if dims == 3 else ".png"
    source = _image(images / f"phantom_test_000_0000{ending}")
    theirs = _image(nn_out / f"phantom_test_000{ending}")
    _assert_same_geometry(theirs, source)

    model = tmp_path / "model.pt"
    assert fusionseg_main(["import-weights", "--weights", str(checkpoint), "--output", str(model)]) == 0
    from fusionseg.checkpoints.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model)
    assert ckpt["model"]["name"] == stored_as and ckpt["preprocessing"]["kind"] == "nnunet"
    args = ["predict", "--checkpoint", str(model), "--input", str(images), "--output", str(fs_out), "--device", "cpu"]
    assert fusionseg_main([*args, "--tta", "--probabilities"]) == 0  # --tta = nnU-Net's mirroring (its default)
    ours = _image(fs_out / f"phantom_test_000{ending}")
    _assert_same_geometry(ours, source)
    assert (ours[0] == theirs[0]).mean() >= 0.999
    p_ours = np.load(fs_out / "phantom_test_000_probabilities.npz")["probabilities"]
    p_theirs = np.load(nn_out / "phantom_test_000.npz")["probabilities"]
    assert p_ours.shape == p_theirs.shape and p_ours.shape[0] == len(LABELS)
    # Same logits, but nnU-Net sums the overlapping windows' logits in fp16 (rounding ≤ 2^-8 per add at
    # |logit| 8–16, a few adds per voxel); a probability moves by ≤ 1/4 of each logit change → a few 1e-3.
    np.testing.assert_allclose(p_ours, p_theirs, atol=5e-3)
    slabs = tmp_path / "slabs"  # without probabilities: nnU-Net's windows and export slab by slab, 1 MiB at a time
    assert fusionseg_main(["predict", "--checkpoint", str(model), "--input", str(images), "--output", str(slabs),
                           "--device", "cpu", "--tta", "--memory", "1M"]) == 0  # fmt: skip
    sliced = _image(slabs / f"phantom_test_000{ending}")
    _assert_same_geometry(sliced, source)
    # The slab path sums in fp32; nnU-Net's fp16 sums decide near-ties of a network trained 2 iterations
    # differently (1-2 % of voxels here). Away from them (top-2 probability margin > 0.02) labels are equal.
    top2 = np.sort(p_theirs, axis=0)[-2:]
    margin = top2[1] - top2[0]  # nnU-Net's array order: (z, y, x), or (1, y, x) for PNG
    margin = margin.transpose(2, 1, 0) if dims == 3 else margin.reshape(sliced[0].shape)
    clear = margin > 0.02
    assert clear.mean() > 0.5 and np.array_equal(sliced[0][clear], theirs[0][clear])


def test_find_best_configuration_ranks_and_ensembles_our_trainers(project):
    for trainer in ("nnUNetTrainerDNetSmall", "nnUNetTrainerDFF"):
        project.train(trainer)
    out = project.run(
        "nnUNetv2_find_best_configuration", DATASETS[3][0], "-c", "3d_fullres", "-tr", "nnUNetTrainerDNetSmallTiny",
        "nnUNetTrainerDFFTiny", "-f", "0", "-np", "1",
    )  # fmt: skip
    assert "nnUNetTrainerDNetSmallTiny__nnUNetPlans__3d_fullres" in out and "nnUNetTrainerDFFTiny" in out
    assert "ensemble" in out.lower()  # the two trainers were also ensembled and scored
    instructions = (project.root / "results" / DATASETS[3][1] / "inference_instructions.txt").read_text()
    assert "nnUNetv2_predict" in instructions and "Tiny" in instructions
