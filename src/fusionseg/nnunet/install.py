"""Make fusionseg's trainers visible to nnU-Net v2's commands (``fusionseg nnunet install | uninstall | list``).

nnU-Net finds a trainer by class name among the modules of ``nnunetv2/training/nnUNetTrainer``
(and, since 2.8, of the folders listed in ``nnUNet_extTrainer``). ``install`` writes one small
module there, ``nnUNetTrainer_fusionseg.py``, that re-exports :mod:`fusionseg.nnunet.trainers`;
``uninstall`` removes it. With a ``folder`` (``--target DIR``) the module goes there instead (e.g. when
site-packages is read-only), to be named in ``nnUNet_extTrainer``.

:func:`run_nnunet_command` is what ``fusionseg nnunet ACTION`` calls.

Example:
    >>> install()                          # .../nnunetv2/training/nnUNetTrainer/nnUNetTrainer_fusionseg.py
    >>> install(Path("~/nnunet_trainers"))  # then: export nnUNet_extTrainer=~/nnunet_trainers
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from fusionseg.errors import InputError
from fusionseg.files import atomic_write
from fusionseg.nnunet.requirements import require_nnunetv2

__all__ = [
    "SHIM_NAME",
    "default_target",
    "install",
    "installed_in",
    "run_nnunet_command",
    "trainer_listing",
    "uninstall",
]

SHIM_NAME = "nnUNetTrainer_fusionseg.py"  # sorts after nnUNetTrainer.py: nnU-Net's own lookups never import it
_MARKER = "# fusionseg nnU-Net trainer shim"
_SHIM = f'''{_MARKER} — written by `fusionseg nnunet install`, removed by `fusionseg nnunet uninstall`.
"""Makes fusionseg's nnU-Net trainers (nnUNetTrainerDNet, nnUNetTrainerDFF, ...) visible to nnUNetv2_* commands."""

try:
    from fusionseg.nnunet.trainers import *  # noqa: F403
except ImportError as err:  # fusionseg (or a dependency) was removed: keep nnU-Net itself working
    import warnings

    warnings.warn(f"fusionseg nnU-Net trainers unavailable ({{err}}); delete {{__file__}} if fusionseg is gone")
'''


def default_target() -> Path:
    """nnU-Net's own trainer folder ``.../nnunetv2/training/nnUNetTrainer`` (found without importing nnunetv2)."""
    require_nnunetv2("fusionseg nnunet")
    spec = importlib.util.find_spec("nnunetv2")
    assert spec is not None and spec.submodule_search_locations is not None  # a package: require_nnunetv2 found it
    return Path(next(iter(spec.submodule_search_locations))) / "training" / "nnUNetTrainer"


def _target(folder: Path | None) -> Path:
    target = Path(folder).expanduser() if folder is not None else default_target()
    if not target.is_dir():
        raise InputError(f"{target} is not a folder; create it first or pass another --target")
    return target


def install(folder: Path | None = None) -> Path:
    """Write the shim module into ``folder`` (default: nnU-Net's trainer folder) → its path."""
    path = _target(folder) / SHIM_NAME
    if not os.access(path.parent, os.W_OK):
        raise InputError(
            f"cannot write to {path.parent}; use `fusionseg nnunet install --target DIR` and "
            "`export nnUNet_extTrainer=DIR` instead"
        )
    with atomic_write(path) as tmp:
        tmp.write_text(_SHIM)
    return path


def uninstall(folder: Path | None = None) -> Path | None:
    """Remove the shim module from ``folder`` (default: nnU-Net's trainer folder) → its path, or None if absent."""
    path = _target(folder) / SHIM_NAME
    if not path.exists():
        return None
    if not path.read_text(errors="replace").startswith(_MARKER):
        raise InputError(f"{path} was not written by fusionseg; remove it yourself if you mean to")
    path.unlink()
    for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        cached.unlink(missing_ok=True)
    return path


def installed_in() -> list[Path]:
    """The shim modules nnU-Net finds: in its trainer folder and in the folders of ``nnUNet_extTrainer``."""
    extra = os.environ.get("nnUNet_extTrainer", "")  # noqa: SIM112 (nnU-Net's name)
    folders = [default_target()] + [Path(p) for p in extra.split(os.pathsep) if p]
    return [f / SHIM_NAME for f in folders if (f / SHIM_NAME).is_file()]


def trainer_listing() -> str:
    """One line per trainer (name, first docstring line), then where nnU-Net finds them."""
    from fusionseg.nnunet.trainers import TRAINERS

    width = max(map(len, TRAINERS))
    lines = [f"{name:<{width}}  {(cls.__doc__ or '').strip().splitlines()[0]}" for name, cls in TRAINERS.items()]
    found = installed_in()
    where = ", ".join(map(str, found)) if found else "not installed (run `fusionseg nnunet install`)"
    return "\n".join([*lines, "", f"visible to nnU-Net: {where}"])


def run_nnunet_command(action: str, target: Path | None = None) -> int:
    """``fusionseg nnunet ACTION``: ``install`` or ``uninstall`` the shim (in ``target``), or ``list`` the trainers,
    printing what was done → exit status 0."""
    if action == "install":
        path = install(target)
        print(f"wrote {path}")
        if target is not None:
            print(f"now run: export nnUNet_extTrainer={path.parent}")
        print("e.g. nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerDNet  (`fusionseg nnunet list` shows all)")
    elif action == "uninstall":
        removed = uninstall(target)
        print(f"removed {removed}" if removed else f"nothing to remove: no {SHIM_NAME} there")
    elif action == "list":
        print(trainer_listing())
    else:
        raise ValueError(f"action must be install, uninstall or list, got {action!r}")
    return 0
