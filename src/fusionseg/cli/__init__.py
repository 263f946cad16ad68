"""``fusionseg`` command line. ``fusionseg COMMAND --help`` shows each command's options.

Every command lives in its own module of this package exposing ``main(argv: list[str], prog: str)
-> int`` (which builds its parser from the shared options of :mod:`fusionseg.cli.options`); this
dispatcher imports only the module that runs, so ``fusionseg --help`` is instant. User errors
(:class:`fusionseg.errors.FusionSegError`) are printed as one line and exit with status 2.
The options of every command are tabulated in docs/cli.md.
"""

from __future__ import annotations

import importlib
import sys

from fusionseg.errors import FusionSegError, find_input_error
from fusionseg.faults import check_environment
from fusionseg.version import __version__

# command -> (module with main(argv, prog), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("fusionseg.cli.demo", "train, predict and evaluate on a shipped real nuclei image (or --phantoms)"),
    "plan": ("fusionseg.cli.plan", "plan a dataset: target spacing, patch, normalisation (plans.json)"),
    "preprocess": ("fusionseg.cli.preprocess", "preprocess a dataset once to the cache (resumable)"),
    "train": ("fusionseg.cli.train", "train a model on a dataset folder"),
    "predict": ("fusionseg.cli.predict", "sliding-window prediction with a checkpoint"),
    "evaluate": ("fusionseg.cli.evaluate", "Dice / IoU / HD95 / surface distance of predictions"),
    "ablate": ("fusionseg.cli.ablate", "equal-budget comparison of fusion modules"),
    "relabel": ("fusionseg.cli.relabel", "renumber a dataset's label values to 0..K-1 (mapping kept for predictions)"),
    "export": ("fusionseg.cli.export", "export a checkpoint to TorchScript or ONNX, or as a MONAI bundle"),
    "import-weights": ("fusionseg.cli.import_weights", "convert an official .pth/.model into a fusionseg checkpoint"),
    "bench": (
        "fusionseg.bench",
        "benchmarks: modules, dnet, ds-transunet, real-data, train-loop, plug, nnunet, scale, predict",
    ),
    "nnunet": ("fusionseg.cli.nnunet", "nnU-Net v2 trainers: install | uninstall | list (docs/nnunet.md)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: fusionseg [--version] COMMAND [options]\n\n{__doc__.splitlines()[0]}\n\ncommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"fusionseg {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{_usage()}\n\nfusionseg: error: unknown command {command!r}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[command]
    prog = f"fusionseg {command}"
    module = importlib.import_module(module_name)
    try:
        check_environment()
        return int(module.main(rest, prog) or 0)
    except FusionSegError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        user_error = find_input_error(err)  # e.g. raised inside a MONAI transform or a DataLoader worker
        if user_error is None:
            raise
        print(f"{prog}: error: {user_error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
