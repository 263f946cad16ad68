"""docs/cli.md is true: its table of options × commands equals what every command's parser accepts.

One concept has one option name in every command (``ONE_NAME``); a renamed option's old spelling is
hidden and sets the same value as the new one, with one line on stderr (``RENAMED``). Spellings
removed before that rule are gone (tests/test_cli.py). Every setting of a training run
(``RunDefinition``, ``Invocation``) is an option of ``fusionseg train`` with a row in docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

# command → module with build_parser(prog)
PARSERS = {
    "train": "fusionseg.cli.train",
    "plan": "fusionseg.cli.plan",
    "preprocess": "fusionseg.cli.preprocess",
    "predict": "fusionseg.cli.predict",
    "evaluate": "fusionseg.cli.evaluate",
    "demo": "fusionseg.cli.demo",
    "ablate": "fusionseg.cli.ablate",
    "export": "fusionseg.cli.export",
    "import-weights": "fusionseg.cli.import_weights",
    "relabel": "fusionseg.cli.relabel",
    "bench modules": "fusionseg.bench.modules",
    "bench dnet": "fusionseg.bench.dnet",
    "bench ds-transunet": "fusionseg.bench.ds_transunet",
    "bench real-data": "fusionseg.bench.real_data",
    "bench train-loop": "fusionseg.bench.train_loop",
    "bench plug": "fusionseg.bench.plug",
    "bench nnunet": "fusionseg.bench.nnunet",
    "bench scale": "fusionseg.bench.scale",
    "bench predict": "fusionseg.bench.predict",
    "nnunet install": "fusionseg.cli.nnunet",
    "nnunet uninstall": "fusionseg.cli.nnunet",
}


def _parser(command: str) -> argparse.ArgumentParser:
    parser = importlib.import_module(PARSERS[command]).build_parser(f"fusionseg {command}")
    if command.startswith("nnunet "):  # a sub-command
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[command.split()[1]]
    return parser


def parser_options(command: str) -> set[str]:
    parser = _parser(command)
    return {
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
    }


def documented_options() -> dict[str, set[str]]:
    """``{command: options}`` from the rows ``| `--opt` ... | meaning | cmd, cmd |`` of docs/cli.md."""
    table: dict[str, set[str]] = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `-"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        options = re.findall(r"`(--?[\w-]+)", cells[0])
        for command in (c.strip() for c in cells[-1].split(",")):
            table.setdefault(command, set()).update(options)
    return table


def test_every_documented_command_exists():
    assert set(documented_options()) <= set(PARSERS), set(documented_options()) - set(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_docs_table_matches_the_parser(command):
    documented = documented_options().get(command, set())
    actual = parser_options(command)
    assert documented == actual, (
        f"docs/cli.md vs `fusionseg {command}`: missing in docs {sorted(actual - documented)}, "
        f"not in the parser {sorted(documented - actual)}"
    )


def help_options(text: str) -> set[str]:
    """The options an argparse ``--help`` text lists: the option spellings at the start of its option lines."""
    options = set()
    for line in text.splitlines():
        match = re.match(r"^ {2}(-[^ ].*?)(?: {2,}|$)", line)
        if match:
            options.update(re.findall(r"(?:^|, )(--?[\w-]+)", match.group(1)))
    return options - {"-h", "--help"}


def test_every_command_is_in_the_table():
    from fusionseg.cli import COMMANDS

    grouped = {name.split()[0] for name in PARSERS if " " in name}  # bench, nnunet: their sub-commands are
    assert set(COMMANDS) - grouped <= set(PARSERS), set(COMMANDS) - grouped - set(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_help_text_lists_the_documented_options(command, capsys):
    """What `fusionseg COMMAND --help` prints is what docs/cli.md says the command takes."""
    from fusionseg.cli import main as cli

    if command.startswith("nnunet "):
        text = _parser(command).format_help()
    else:
        with pytest.raises(SystemExit) as done:
            cli([*command.split(), "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
    assert help_options(text) == documented_options().get(command, set()), text


def test_top_level_help_says_what_the_commands_do(capsys):
    from fusionseg.cli import main as cli

    assert cli(["--help"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "real nuclei image" in lines["demo"] and "synthetic phantoms" not in lines["demo"].split("(")[0]
    assert "MONAI bundle" in lines["export"] and "relabel" in lines


# concept → (its option name, spellings no command shows); every command's visible options are checked.
ONE_NAME = {
    "processes that read and preprocess data": ("--workers", ("--num-workers", "--da-workers", "--jobs", "-j")),
    "CPU threads": ("--threads", ("--num-threads", "--cpu-threads")),
    "device": ("--device", ("--gpu", "--devices")),
    "preprocessed-data cache": ("--cache", ("--cache-dir", "--cache-root")),
    "a benchmark's folder of generated data": ("--workdir", ("--work", "--work-dir")),
    "where results go": ("--output", ("--out", "--output-dir", "--out-dir", "-o")),
    "training iterations per epoch": ("--iters-per-epoch", ("--iterations-per-epoch", "--num-iterations")),
    "spacing to resample to": ("--target-spacing", ("--plan-spacing", "--resample-spacing")),
    "memory budget": ("--memory", ("--max-memory", "--memory-budget")),
    "no progress output": ("--no-progress", ("--quiet", "--silent", "--progress")),
    "random seed": ("--seed", ("--random-seed", "--rng-seed")),
}

# (command, old spelling, option, a value, arguments the command requires): the old spelling still works.
RENAMED = [
    ("train", "--num-workers", "--workers", "3", ["--data", "d"]),
    ("ablate", "--num-workers", "--workers", "3", ["--data", "d"]),
    ("bench scale", "--num-workers", "--train-workers", "3", []),
    ("bench nnunet", "--da-workers", "--workers", "3", []),
    ("bench nnunet", "--iterations", "--iters-per-epoch", "7", []),
    ("bench nnunet", "--work", "--workdir", "some/folder", []),
    ("bench predict", "--plan-spacing", "--target-spacing", "1,1,2", []),
]


@pytest.mark.parametrize("concept", sorted(ONE_NAME))
def test_one_option_name_per_concept(concept):
    name, others = ONE_NAME[concept]
    users = sorted(command for command in PARSERS if name in parser_options(command))
    assert users, f"no command has {name} ({concept})"
    shown = {command: sorted(parser_options(command) & set(others)) for command in PARSERS}
    assert not any(shown.values()), f"{concept} is {name}: { ({c: o for c, o in shown.items() if o}) }"


@pytest.mark.parametrize(("command", "old", "new", "value", "required"), RENAMED, ids=lambda v: str(v))
def test_old_spelling_sets_the_same_value(command, old, new, value, required, capsys):
    parser = _parser(command)
    assert old not in parser_options(command) and new in parser_options(command)
    expected = parser.parse_args([*required, new, value])
    assert capsys.readouterr().err == ""
    assert parser.parse_args([*required, old, value]) == expected
    err = capsys.readouterr().err
    assert err == f"fusionseg {command}: note: {old} is now {new} (the old name still works)\n"
    assert help_options(parser.format_help()) == documented_options()[command]  # the old spelling stays hidden


def test_old_spelling_in_a_run_config(tmp_path, capsys):
    """A run config (the config.yaml of a run folder) naming an old option still sets the option."""
    from fusionseg.cli.run_config import parse_with_config
    from fusionseg.cli.train import build_parser, config_from_args

    config = tmp_path / "config.yaml"
    config.write_text("data: d\nnum-workers: 2\nepochs: 3\n")
    args = parse_with_config(build_parser(), ["--config", str(config)])
    assert (config_from_args(args).workers, args.epochs) == (2, 3)
    assert capsys.readouterr().err == (
        f"fusionseg train: note: --config {config}: num-workers is now workers (the old name still works)\n"
    )
    assert parse_with_config(build_parser(), ["--config", str(config), "--workers", "1"]).workers == 1


def test_saved_train_args_use_todays_field_names():
    from dataclasses import fields

    from fusionseg.training.config import RENAMED_FIELDS, TrainConfig, current_field_names

    names = {f.name for f in fields(TrainConfig)}
    assert set(RENAMED_FIELDS.values()) <= names and not set(RENAMED_FIELDS) & names
    assert current_field_names({"num_workers": 2, "epochs": 5}) == {"workers": 2, "epochs": 5}


# Options of `fusionseg train` that set no field of the run or the invocation: they choose what the command does.
TRAIN_COMMAND_ONLY = {"config", "cross_validate"}


def test_every_training_setting_is_an_option_with_a_row(capsys):
    """Each field of RunDefinition and Invocation is an option of `fusionseg train` of the same name (unless its
    metadata says NO_OPTION), which `--help` lists and docs/cli.md has a row for; each option sets a field."""
    from dataclasses import fields

    from fusionseg.cli import main as cli
    from fusionseg.training.config import Invocation, RunDefinition

    spellings: dict[str, list[str]] = {}
    for action in _parser("train")._actions:
        if action.option_strings and action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
            spellings.setdefault(action.dest, []).extend(action.option_strings)
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    shown, documented = help_options(capsys.readouterr().out), documented_options()["train"]
    settings = [f for home in (RunDefinition, Invocation) for f in fields(home)]
    for setting in settings:
        options = spellings.get(setting.name, [])
        if setting.metadata.get("option", True) is False:
            assert not options, f"{setting.name} is NO_OPTION but `fusionseg train` has {options}"
            continue
        assert options, f"{setting.name} has no option of `fusionseg train` (dest {setting.name!r})"
        assert set(options) <= shown, f"`fusionseg train --help` does not list {options}"
        assert set(options) <= documented, f"docs/cli.md has no row of {options} for train"
    assert set(spellings) - {f.name for f in settings} == TRAIN_COMMAND_ONLY


def test_one_home_per_training_setting():
    """A field lives in the run definition or the invocation, and TrainConfig has every one of them."""
    from dataclasses import fields

    from fusionseg.training.config import Invocation, RunDefinition, TrainConfig, one_time_fields

    run, invocation = {f.name for f in fields(RunDefinition)}, {f.name for f in fields(Invocation)}
    assert not run & invocation and {f.name for f in fields(TrainConfig)} == run | invocation
    assert set(one_time_fields()) == {"resume", "overwrite", "stop_after"}
    assert {f.name for f in fields(RunDefinition) if not f.compare} == {"data", "output", "init"}
