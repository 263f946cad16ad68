"""``fusionseg nnunet install | uninstall | list``: make fusionseg's trainers visible to nnU-Net v2's commands.

Parsing only; the work is :func:`fusionseg.nnunet.install.run_nnunet_command` (docs/nnunet.md).

Example::

    fusionseg nnunet install                  # once; nnUNetv2_train ... -tr nnUNetTrainerDNet now works
    fusionseg nnunet uninstall                # removes the module again
    fusionseg nnunet install --target ~/nnunet_trainers && export nnUNet_extTrainer=~/nnunet_trainers
"""

from __future__ import annotations

import argparse

from fusionseg.cli.options import path

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg nnunet") -> argparse.ArgumentParser:
    """``install`` / ``uninstall`` (each with ``--target``) and ``list``."""
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action, text in (
        ("install", "write nnUNetTrainer_fusionseg.py into nnU-Net's trainer folder (or --target)"),
        ("uninstall", "remove it again"),
    ):
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument("--target", type=path, default=None, help="another folder, to be listed in nnUNet_extTrainer")
    sub.add_parser("list", help="the trainers and where nnU-Net finds them")
    return parser


def main(argv: list[str], prog: str = "fusionseg nnunet") -> int:
    from fusionseg.nnunet.install import run_nnunet_command

    args = build_parser(prog).parse_args(argv)
    return run_nnunet_command(**vars(args))
