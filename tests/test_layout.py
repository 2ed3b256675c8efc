"""The package's dependencies point one way: no module imports, even lazily, a module that
(directly or through others) imports it back, nor a module of a higher layer; and the house
stays small: no class over 250 lines, no module over 500."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vidqa"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The vidqa modules ``path`` imports anywhere (module level or in a function), leaving
    out imports that run only for type checkers."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {module for module in found if module in modules} - {name}


def import_graph(package: Path) -> dict[str, set[str]]:
    paths = {module_name(p): p for p in package.rglob("*.py")}
    return {name: imports_of(path, name, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target, stack + [target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_import_graph_when_walked_then_has_no_cycle():
    cycle = find_cycle(import_graph(PACKAGE))

    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
])
def test_find_cycle_when_graph_given_then_names_the_cycle(graph, expected):
    assert find_cycle(graph) == expected


def test_imports_of_when_lazy_or_type_checking_then_only_lazy_counts(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from vidqa.a import X\n"
                      "def f():\n    from vidqa.b import y\n")

    assert imports_of(module, "vidqa.m", {"vidqa.a", "vidqa.b", "vidqa.m"}) == {"vidqa.b"}


# The rooms of vidqa/, lowest first (../shared/ARCHITECTURE.md): a module may import its own
# layer and those below it. The key is the module's first name under vidqa.
LAYERS = (
    ("", "config", "config_notify", "config_schema", "messages", "errors", "clock", "storage",
     "run", "workers"),  # ground floor
    ("assets",),  # model and video files: resolved and fetched, never loaded
    ("sinks",),  # drawing and writing
    ("sources", "zones", "roi"),  # frames in; zones and rules; which crops to ask
    ("detection", "tracking"),
    ("vlm",),  # the model: loading, answering, adaptive compression
    ("serving",),  # crops in, answers out
    ("notify",),  # committed events out to MQTT and webhooks; the store calls it
    ("store", "delivery"),
    ("web",),
    ("pipeline",),  # one stream's chain
    ("engines",),  # how a run's streams are executed
    ("experiments", "evaluation", "ask"),  # research, scoring, asking the past: on the product
    ("cli", "__main__"),  # the commands (python -m vidqa: the same)
)
LAYER = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_when_every_import_checked_then_none_points_up():
    graph = import_graph(PACKAGE)
    undeclared = sorted({room(m) for m in graph} - set(LAYER))
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if LAYER.get(room(b), -1) > LAYER.get(room(a), -1))

    assert not undeclared, f"declare these rooms in tests/test_layout.py LAYERS: {undeclared}"
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


@pytest.mark.parametrize("importer, forbidden", [
    ("vidqa.zones", "vidqa.sinks"),  # rules do not draw
    ("vidqa.assets", "vidqa.vlm"),  # assets resolve files; the model code loads them
    ("vidqa.serving.worker", "vidqa.detection"),  # the VLM worker does not detect
    ("vidqa.serving.worker", "vidqa.tracking"),
])
def test_imports_when_a_room_must_not_reach_another_then_it_does_not(importer, forbidden):
    graph = import_graph(PACKAGE)
    reached = _reachable(graph, {m for m in graph if m == importer or
                                 m.startswith(importer + ".")})

    assert not {m for m in reached if m == forbidden or m.startswith(forbidden + ".")}


def test_product_when_any_module_outside_experiments_then_it_never_imports_them():
    graph = import_graph(PACKAGE)
    product = {m for m in graph if room(m) not in ("experiments", "cli", "__main__")}

    assert not [m for m in _reachable(graph, product) if room(m) == "experiments"]


@pytest.mark.parametrize("command", ["cmd_run", "cmd_plan", "cmd_eval_tracks",
                                     "cmd_eval_answers", "cmd_assets"])
def test_cli_when_a_product_command_runs_then_it_imports_nothing_from_experiments(command):
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == command)
    graph = import_graph(PACKAGE)
    imported = {node.module for node in ast.walk(function)
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {f"{node.module}.{a.name}" for node in ast.walk(function)
                 if isinstance(node, ast.ImportFrom) and node.module for a in node.names}
    called = {m for m in graph if m in imported}
    top = {alias.name if isinstance(node, ast.Import) else node.module
           for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
           for alias in node.names}  # cli.py's module-level imports count for every command
    top |= {f"{node.module}.{a.name}" for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module for a in node.names}
    top &= set(graph)

    assert not [m for m in _reachable(graph, called | top) if room(m) == "experiments"]


def _reachable(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_sizes_when_measured_then_no_class_over_250_lines_and_no_module_over_500():
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 500:
            too_long.append(f"{path.relative_to(PACKAGE)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                too_long.append(f"{path.relative_to(PACKAGE)}: class {node.name} "
                                f"{node.end_lineno - node.lineno + 1} lines")

    assert not too_long, too_long
