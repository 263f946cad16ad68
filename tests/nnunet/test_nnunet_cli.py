"""``fusionseg nnunet install | uninstall | list`` and ``import-weights`` without ``--model``."""

from __future__ import annotations

import runpy
import sys

import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (install it as docs/nnunet.md says)")

from fusionseg.cli import main as fusionseg_main
from fusionseg.errors import InputError
from fusionseg.nnunet.install import SHIM_NAME, default_target, install, installed_in, uninstall
from fusionseg.nnunet.trainers import TRAINERS


def test_install_writes_a_shim_that_exports_every_trainer_and_uninstall_removes_it(tmp_path):
    path = install(tmp_path)
    assert path == tmp_path / SHIM_NAME
    namespace = runpy.run_path(str(path))
    assert {name: namespace.get(name) for name in TRAINERS} == TRAINERS
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / f"{path.stem}.cpython-311.pyc").write_bytes(b"x")
    assert uninstall(tmp_path) == path
    assert not path.exists() and not list((tmp_path / "__pycache__").iterdir())
    assert uninstall(tmp_path) is None


def test_shim_is_found_before_nnunet_searches_its_subfolders():
    # nnU-Net imports the modules of its trainer folder in name order, then recurses into subpackages
    # (primus/ needs timm): the shim must be a top-level module sorting after nnUNetTrainer.py
    folder = default_target()
    assert folder.parts[-3:] == ("nnunetv2", "training", "nnUNetTrainer") and (folder / "nnUNetTrainer.py").is_file()
    assert sorted(["nnUNetTrainer.py", SHIM_NAME])[0] == "nnUNetTrainer.py"


def test_shim_warns_instead_of_breaking_nnunet_when_fusionseg_is_gone(tmp_path, monkeypatch):
    path = install(tmp_path)
    monkeypatch.setitem(sys.modules, "fusionseg.nnunet.trainers", None)  # import fails like an uninstalled package
    with pytest.warns(UserWarning, match="fusionseg nnU-Net trainers unavailable"):
        runpy.run_path(str(path))


def test_uninstall_leaves_foreign_files_alone(tmp_path):
    (tmp_path / SHIM_NAME).write_text("class nnUNetTrainerMine: pass\n")
    with pytest.raises(InputError, match="was not written by fusionseg"):
        uninstall(tmp_path)
    with pytest.raises(InputError, match="is not a folder"):
        install(tmp_path / "missing")


def test_cli_install_list_uninstall(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    already = installed_in()  # nnU-Net's own folder holds a shim once `fusionseg nnunet install` ran in this venv
    assert fusionseg_main(["nnunet", "install", "--target", str(tmp_path)]) == 0
    assert f"export nnUNet_extTrainer={tmp_path}" in capsys.readouterr().out
    monkeypatch.setenv("nnUNet_extTrainer", str(tmp_path))
    assert fusionseg_main(["nnunet", "list"]) == 0
    out = capsys.readouterr().out
    visible = ", ".join(map(str, [*already, tmp_path / SHIM_NAME]))
    assert all(name in out for name in TRAINERS) and out.endswith(f"visible to nnU-Net: {visible}\n")
    assert fusionseg_main(["nnunet", "uninstall", "--target", str(tmp_path)]) == 0
    assert "removed" in capsys.readouterr().out and not (tmp_path / SHIM_NAME).exists()


def test_import_weights_without_model_wants_an_nnunet_checkpoint(tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "plain.pth")
    args = ["import-weights", "--weights", str(tmp_path / "plain.pth"), "--output", str(tmp_path / "out.pt")]
    assert fusionseg_main(args) == 2
    err = capsys.readouterr().err
    assert "is not an nnU-Net v2 checkpoint" in err and "give --model for official weights" in err
    assert not (tmp_path / "out.pt").exists()
