"""The layers of docs/architecture.md hold: imports run one way and form no cycle, and no
function outside tests/ grows past 80 lines.

Both are read from the source with ``ast`` (function-local imports included: a lazy import
may save start-up time, but it may not hide a cycle), so they need nothing installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Import name -> folder. The cluster layer is the folder slurm/, installed as epicslurm.
PACKAGES = {"epicdata": "epicdata", "preprocess": "preprocess", "train": "train"}
PACKAGES |= {"epicslurm": "slurm", "bench": "bench"}
#: Which packages each package may import (itself always). docs/architecture.md draws it.
ALLOWED = {
    "epicdata": set(),
    "preprocess": {"epicdata"},
    "train": {"epicdata"},
    "epicslurm": {"epicdata", "preprocess", "train"},
    "bench": {"epicdata", "preprocess", "train", "epicslurm"},
}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Every module of the project's packages by dotted name."""
    modules = {}
    for name, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([name, *parts])] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (a package's ``__init__``
    counts for ``from package import module``)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(module: str) -> str:
    return module.partition(".")[0]


def test_every_package_is_found() -> None:
    """The checks below would pass vacuously on a renamed folder."""
    for name, folder in PACKAGES.items():
        assert (ROOT / folder / "__init__.py").is_file(), folder
        assert sum(_top(m) == name for m in MODULES) >= 2, name


def test_imports_run_down_the_layers() -> None:
    """epicdata imports no other package; preprocess and train never import each other;
    neither knows the cluster layer; nothing but bench imports bench."""
    wrong = sorted(
        f"{source} imports {target}"
        for source, targets in GRAPH.items()
        for target in targets
        if _top(target) != _top(source) and _top(target) not in ALLOWED[_top(source)]
    )
    assert not wrong, "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_even_through_function_local_imports() -> None:
    cycle = _cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The oracle of the test above, on a graph with a known loop (device -> engine ->
    nvjpeg -> device was one) and on one without."""
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(loop) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def _long_functions(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(root)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_function_outside_tests_is_over_80_lines() -> None:
    """Counted from the ``def`` line to the function's last line, decorators excluded:
    split a longer one into named steps (STYLE.md's build_* functions, a record type)."""
    long = [line for path in MODULES.values() for line in _long_functions(path)]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("lines, over", [(80, False), (81, True)])
def test_the_length_rule_counts_def_to_last_line(tmp_path, lines, over) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 1))
    source = tmp_path / "f.py"
    source.write_text(f"@decorator\ndef f():\n{body}")
    assert bool(_long_functions(source, tmp_path)) is over
