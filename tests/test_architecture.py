"""The package's layering: no import cycles between modules or between packages, and no module importing from a
layer above its own.

Layers, bottom to top (docs/architecture.md): version, errors, files, layers → kernels → fusion → plug →
nets, data → runtime → checkpoints → inference → evaluation → training, deploy → workflows → nnunet →
cli, bench → the package facade. Every ``import`` counts, also
those inside functions (a lazy import still makes the lower layer depend on the upper one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fusionseg"

LAYERS = {
    "fusionseg.version": 0,
    "fusionseg.errors": 0,
    "fusionseg.files": 0,
    "fusionseg.faults": 0,
    "fusionseg.layers": 0,
    "fusionseg.resources": 0,
    "fusionseg.kernels": 1,
    "fusionseg.fusion": 2,
    "fusionseg.plug": 3,
    "fusionseg.nets": 4,
    "fusionseg.data": 4,
    "fusionseg.runtime": 5,
    "fusionseg.checkpoints": 6,
    "fusionseg.inference": 7,
    "fusionseg.evaluation": 8,
    "fusionseg.training": 9,
    "fusionseg.deploy": 9,
    "fusionseg.workflows": 10,
    "fusionseg.nnunet": 11,
    "fusionseg.cli": 12,
    "fusionseg.bench": 12,
    "fusionseg.__main__": 13,
    "fusionseg": 13,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS and docs/architecture.md")


def _imports(path: Path) -> set[str]:
    """fusionseg modules imported anywhere in ``path`` (resolved to the deepest existing module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path)
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                package = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("fusionseg"):
                found.add(_existing(name))
    found.discard(here)
    return found


def _existing(name: str) -> str:
    parts = name.split(".")
    while parts:
        candidate = SRC.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return name


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer():
    for module in _graph():
        _layer(module)


def test_no_module_imports_from_a_layer_above():
    bad = []
    for module, imports in _graph().items():
        _, rank = _layer(module)
        for target in imports:
            layer, target_rank = _layer(target)
            if target_rank > rank:
                bad.append(f"{module} imports {target} ({layer} is above)")
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]], skip=lambda node, target: False) -> list[str]:
    """Every cycle found by a depth-first walk of ``graph``, as ``"a → b → a"``."""
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "active"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or skip(node, nxt):
                continue
            if state.get(nxt) == "active":
                cycles.append(" → ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles():
    # Package __init__ files that only re-export their own submodules are part of their package.
    cycles = _cycles(_graph(), _is_own_package_init)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _package(module: str) -> str:
    """``fusionseg.nets.unet`` → ``fusionseg.nets``; top-level modules (``fusionseg.files``) are their own package."""
    return ".".join(module.split(".")[:2])


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, imports in graph.items():
        edges = packages.setdefault(_package(module), set())
        edges.update(_package(t) for t in imports if _package(t) != _package(module))
    return packages


def test_no_package_cycles():
    """Package A importing package B (any module of A, any of B) and B importing A, directly or through others."""
    cycles = _cycles(_package_graph(_graph()))
    assert not cycles, "package import cycles:\n" + "\n".join(cycles)


def test_package_cycle_detection_finds_a_cycle_through_any_module():
    graph = {"fusionseg.nets.a": {"fusionseg.nnunet.b"}, "fusionseg.nnunet.c": {"fusionseg.nets.d"}}
    assert _cycles(_package_graph(graph)) == ["fusionseg.nets → fusionseg.nnunet → fusionseg.nets"]


def _is_own_package_init(module: str, target: str) -> bool:
    """A submodule importing its own package's ``__init__`` (or the reverse) is not a dependency between modules."""
    return module.startswith(target + ".") or target.startswith(module + ".")


@pytest.mark.parametrize("module", ["fusionseg.fusion", "fusionseg.nets", "fusionseg.kernels"])
def test_blocks_and_networks_import_without_monai(module):
    import subprocess
    import sys

    code = (
        "import sys, importlib; importlib.import_module(sys.argv[1]); "
        "bad = [m for m, mod in sys.modules.items() "
        "if mod is not None and m.split('.')[0] in ('monai', 'dynamic_network_architectures', 'nnunetv2')]; "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------- CLI entry points
# Commands whose main() still runs stage functions itself, and the run_* that is to take over (strict xfail: a
# command that passes must leave this table).
NOT_YET_ONE_CALL: dict[str, str] = {}


def _command_modules() -> dict[str, str]:
    """``fusionseg COMMAND`` → its module in ``fusionseg.cli`` (the benchmarks are not commands of a stage)."""
    from fusionseg.cli import COMMANDS

    return {name: module for name, (module, _) in COMMANDS.items() if module.startswith("fusionseg.cli.")}


def entry_point_problems(source: str) -> list[str]:
    """What keeps ``main()`` in ``source`` from being "parse, then one ``run_*`` call of a stage below the CLI".

    ``main`` may call its parser, helpers of ``fusionseg.cli`` and the run's options class (``*Options``);
    every other name imported from fusionseg it calls is a stage function the ``run_*`` should call instead.
    """
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name: node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"), None)
    if main is None:
        return ["no main()"]
    called = [
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in ast.walk(main)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
    ]
    runs = [name for name in called if name.startswith("run_")]
    problems = [] if len(runs) == 1 else [f"main() calls {len(runs)} run_* functions ({', '.join(runs)}), not one"]

    def from_stage(name: str) -> bool:
        module = imported.get(name, "")
        return module.startswith("fusionseg.") and not module.startswith("fusionseg.cli")

    problems += [f"{name} is not imported from a stage package" for name in runs if not from_stage(name)]
    others = [n for n in called if from_stage(n) and not n.startswith("run_") and not n.endswith("Options")]
    problems += [f"main() calls {name} (from {imported[name]}) itself" for name in others]
    return problems


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=f"{NOT_YET_ONE_CALL[c]} is being written"))
        if c in NOT_YET_ONE_CALL
        else c
        for c in sorted(_command_modules())
    ],
)
def test_every_command_parses_then_calls_one_run_function(command):
    module = _command_modules()[command]
    path = SRC.joinpath(*module.split(".")).with_suffix(".py")
    assert entry_point_problems(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("main", "problem"),
    [
        ("from fusionseg.inference.run import run_prediction\ndef main(argv):\n    return run_prediction(argv)", None),
        ("def main(argv):\n    return 0", "calls 0 run_* functions"),
        ("from fusionseg.a import run_a, run_b\ndef main(argv):\n    run_a(argv)\n    return run_b(argv)", "calls 2"),
        ("from fusionseg.cli.x import run_x\ndef main(argv):\n    return run_x(argv)", "not imported from a stage"),
        ("from fusionseg.a import load, run_a\ndef main(argv):\n    return run_a(load(argv))", "calls load"),
    ],
)
def test_entry_point_check_finds_what_the_cli_does_itself(main, problem):
    problems = entry_point_problems(main)
    assert (problems == []) if problem is None else any(problem in p for p in problems), problems
