"""``--config FILE``: a command's options from a YAML / JSON file; options on the command line override it.

Keys are option names without ``--`` (``iters-per-epoch`` or ``iters_per_epoch``); on/off switches
take true/false under their positive name (``augment: false``) or the option as written
(``no-augment: true``). A renamed option's old name still works (``num-workers``: ``workers``; one line on
stderr says the new name). An unknown key is a one-line error naming the nearest valid key.
:func:`resolved_options` is what ``config.yaml`` in a run folder holds; its paths are absolute, so
``--config RUN/config.yaml`` repeats the run from any directory.

A relative path in a config file (hand-written, or ``config.yaml`` of an older run) is taken
relative to the first of these where it exists: the current directory (as before), the config
file's folder, the directory an older run was started from (the config's folder less its relative
``output`` entry). A path that exists in none of them (an output folder) is taken relative to that
starting directory when it is known, else to the current directory (:func:`resolve_config_path`).

Example:
    >>> args = parse_with_config(build_parser(), ["--config", "run.yaml", "--epochs", "3"])   # epochs 3 wins
    >>> read_run_config("run.yaml")                 # {"iters_per_epoch": 5, ...}: keys with _ in place of -
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fusionseg.cli.options import OldSpelling, path
from fusionseg.errors import InputError

__all__ = [
    "CONFIG_OPTION",
    "nearest_key",
    "parse_with_config",
    "read_run_config",
    "recorded_options",
    "resolve_config_path",
    "resolved_options",
]

CONFIG_OPTION = "config"
MAX_RUN_CONFIG_BYTES = 1 << 20  # a run's config.yaml is about 1 kB
_SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)


def _key(option: str) -> str:
    """``--num-workers`` → ``num_workers``: an option as a config key."""
    return option.lstrip("-").replace("-", "_")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Visible options by dest (``iters_per_epoch``) and by spelling (``no_augment``)."""
    by_key: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest in ("help", CONFIG_OPTION):
            continue
        by_key.setdefault(action.dest, action)
        for spelling in action.option_strings:
            by_key.setdefault(_key(spelling), action)
    return by_key


def _renamed(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Old option names → today's, as config keys: ``{"num_workers": "workers"}``."""
    return {
        _key(spelling): _key(action.new_name)
        for action in parser._actions
        if isinstance(action, OldSpelling)
        for spelling in action.option_strings
    }


def _value(key: str, action: argparse.Action, value: Any, source: str) -> tuple[str, Any]:
    """(dest, value) of file entry ``key: value`` for ``action``, converted as the command line would."""
    name = "--" + key.replace("_", "-")
    if isinstance(action, _SWITCHES):
        if not isinstance(value, bool) and value is not None:
            raise InputError(f"{source}: {key.replace('_', '-')} takes true or false, got {value!r}")
        if key != action.dest and value is not None:  # the option as written: `no-augment: true`
            return action.dest, action.const if value else action.default
        return action.dest, value
    if value is None:
        return action.dest, None
    if action.type in (Path, path) and not isinstance(value, str):
        raise InputError(f"{source}: {key.replace('_', '-')} takes one path, got {value!r}")
    if isinstance(value, dict):
        text = json.dumps(value)
    elif isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    if action.type is None:
        converted: Any = text
    else:
        assert callable(action.type)  # functions here, never names registered with argparse
        try:
            converted = action.type(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
            raise InputError(f"{source}: {name} {text!r}: {err}") from None
    if action.choices is not None and converted not in action.choices:
        raise InputError(f"{source}: {name} must be one of {', '.join(map(str, action.choices))}, got {converted!r}")
    return action.dest, converted


def _run_origin(config_path: Path, output: Any) -> Path | None:
    """The directory an older run was started from: ``RUN`` of ``RUN/config.yaml`` less its relative ``output``."""
    if not isinstance(output, str) or not output.strip() or Path(output).is_absolute():
        return None
    folder, parts = config_path.resolve().parent, Path(output).parts
    if parts == (".",) or len(parts) > len(folder.parts) or folder.parts[-len(parts) :] != parts:
        return None
    return folder.parents[len(parts) - 1]


def resolve_config_path(value: Path, config_path: Path, origin: Path | None = None) -> Path:
    """``value`` of a config file as an absolute path (see the module docstring for the order of folders).

    Example:
        >>> resolve_config_path(Path("data/Dataset501"), Path("/runs/x/config.yaml"), origin=Path("/home/me"))
        PosixPath('/home/me/data/Dataset501')      # when neither ./data/Dataset501 nor /runs/x/data/... exists
    """
    value = Path(value).expanduser()
    if value.is_absolute():
        return value
    candidates = [Path.cwd(), config_path.resolve().parent] + ([origin] if origin is not None else [])
    for base in candidates:
        if (base / value).exists():
            return (base / value).absolute()
    return ((origin if origin is not None else Path.cwd()) / value).absolute()


def _resolved_paths(value: Any, config_path: Path, origin: Path | None) -> Any:
    """Paths (also inside tuples, as ``--pretrained``) of a converted config value, resolved."""
    if isinstance(value, Path):
        return resolve_config_path(value, config_path, origin)
    if isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
        return tuple(resolve_config_path(v, config_path, origin) for v in value)
    return value


def nearest_key(key: str, valid: Iterable[str]) -> str:
    """The valid key closest to ``key`` (difflib), for "did you mean" hints."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return close[0] if close else valid[0]


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON run-config file → ``{key with _ for -: value}``.

    Raises :class:`InputError` (one line) for a missing or unparsable file or one that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config {path} does not exist; pass a YAML or JSON run config (e.g. runs/x/config.yaml)")
    if path.stat().st_size > MAX_RUN_CONFIG_BYTES:
        raise InputError(
            f"--config {path} is {path.stat().st_size:,} bytes, more than a run config needs "
            f"(limit {MAX_RUN_CONFIG_BYTES:,}); pass the config.yaml of a run or a short file of option: value"
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"--config {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        values = json.loads(text) if kind == "JSON" else _safe_yaml(text)
    except RecursionError:
        raise InputError(f"--config {path} is nested too deeply to be a run config") from None
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise InputError(f"--config {path} is not valid {kind}: {' '.join(str(err).split())[:160]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"--config {path} must hold a mapping of option: value, got a {type(values).__name__}")
    return {str(k).strip().lstrip("-").replace("-", "_"): v for k, v in values.items()}


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases (``*name``): a run config needs none, and nested aliases ("billion
    laughs") expand a few hundred bytes into gigabytes."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                anchor = self.peek_event().anchor
                raise yaml.YAMLError(f"aliases are not allowed in a run config (found *{anchor}); write values out")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliases)


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the defaults of ``--config FILE`` (when given) taken from the file."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--" + CONFIG_OPTION, type=path, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        options = _options(parser)
        values = read_run_config(known.config)
        origin = _run_origin(known.config, values.get("output"))
        renamed = _renamed(parser)
        for key, value in values.items():
            if key in renamed:
                old, key = key.replace("_", "-"), renamed[key]
                note = f"--config {known.config}: {old} is now {key.replace('_', '-')} (the old name still works)"
                print(f"{parser.prog}: note: {note}", file=sys.stderr)
            action = options.get(key)
            if action is None:
                valid = {a.dest for a in options.values()}
                hint = nearest_key(key, valid).replace("_", "-")
                raise InputError(
                    f"--config {known.config}: unknown key {key.replace('_', '-')!r}; did you mean {hint!r}?"
                )
            dest, converted = _value(key, action, value, f"--config {known.config}")
            converted = _resolved_paths(converted, known.config, origin)
            parser.set_defaults(**{dest: converted})
            for other in parser._actions:
                if other.dest == dest:
                    other.required = False
    return parser.parse_args(argv)


def resolved_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, leave_out: Sequence[str] = ()
) -> dict[str, Any]:
    """Every visible option's value in ``args`` by dest (``--model-kwargs`` as a mapping, paths absolute),
    ``leave_out`` aside."""
    out: dict[str, Any] = {}
    for action in parser._actions:
        dest = action.dest
        if not action.option_strings or action.help == argparse.SUPPRESS or dest in ("help", CONFIG_OPTION):
            continue
        if dest in out or dest in leave_out or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if dest == "model_kwargs" and isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, Path):
            value = value.expanduser().absolute()
        elif isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
            value = tuple(v.expanduser().absolute() for v in value)
        out[dest] = value
    return out


def recorded_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """What a run folder's ``config.yaml`` records: :func:`resolved_options` without the one-time actions
    (``--resume``, ``--overwrite``, ``--stop-after``), so that the file repeats the run."""
    from fusionseg.training.config import one_time_fields

    return resolved_options(parser, args, leave_out=one_time_fields())
