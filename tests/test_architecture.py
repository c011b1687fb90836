"""The tree tells the architecture: no import circles in the package (module-level or inside
functions), no module reaching into another's private names, every module under 400 lines or
saying at its top why it is longer, every package folder saying in its docstring what lives there,
and the layers kept (the framework's inventory, transport and engine, roles, the library face and
the cloud, the course layer, the command faces: none imports from a layer above its own), and what a role
knows (its unit names, state files, the local address rule) written down by that role alone."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SOURCES = [*PROJECT.glob("fleet/**/*.py"), *PROJECT.glob("roles/**/*.py")]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (a package counts as its __init__)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    known = {module_name(p) for p in SOURCES}
    return {module_name(p): imports(p, known) for p in SOURCES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert cycles(graph()) == []


def test_long_modules_say_why():
    long = []
    for path in SOURCES:
        text = path.read_text()
        lines = text.count("\n")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and "longer than" not in docstring.lower():
            long.append(f"{path.relative_to(PROJECT)}: {lines} lines")
    assert long == [], "over 400 lines without a reason at the top ('longer than ...'):\n" + "\n".join(long)


def test_every_package_says_what_lives_there():
    silent = [str(p.relative_to(PROJECT)) for p in PROJECT.glob("fleet/**/__init__.py")
              if not ast.get_docstring(ast.parse(p.read_text()))]
    assert silent == []


def private_reach(source: str, known: set[str]) -> list[str]:
    """Private names (`_x`, not dunders) that `source` takes from other project modules:
    `from fleet.m import _x`, or `m._x` where m is a project module it imported."""
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    tree = ast.parse(source)
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    aliases.add(alias.asname or alias.name)
                elif node.module in known and private(alias.name):
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            aliases |= {alias.asname for alias in node.names if alias.asname and alias.name in known}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and private(node.attr)):
            found.append(f"{node.value.id}.{node.attr}")
    return sorted(set(found))


def test_the_private_name_finder_finds_both_forms():
    known = {"fleet.a", "fleet.b"}
    source = "from fleet.a import _x, y, __all__\nfrom fleet import b\nimport fleet.a as a\nb._z(); a.ok(); b.__doc__"
    assert private_reach(source, known) == ["b._z", "fleet.a._x"]


def test_no_module_takes_another_modules_private_names():
    # A name two modules share is part of the home module's face: it goes without the underscore.
    known = {module_name(p) for p in SOURCES}
    reach = {str(p.relative_to(PROJECT)): found for p in SOURCES if (found := private_reach(p.read_text(), known))}
    assert reach == {}


# The layers, lowest first. A module imports only from its own layer or one below; the small
# helpers (fleet.errors, fleet.atomic, fleet.yamlfile, fleet.shell) sit under all of them.
LAYERS = [
    ("inventory", ("fleet.inventory",)),                                    # hosts and their variables
    ("transport", ("fleet.transport",)),                                    # reaching a host, keeping it
    ("engine", ("fleet.engine",)),                                          # runs any course's roles
    ("roles", ("roles",)),                                                  # what a course installs
    ("library", ("fleet.app", "fleet.aws")),                                # one run; the cloud's API
    ("course", ("fleet.course",)),                                          # report, access, images, work
    ("faces", ("fleet.cli", "fleet.cli_cloud", "fleet.commands", "fleet.testhosts", "fleet.lint", "bench")),
]


def layer_of(name: str) -> int | None:
    """The highest layer whose prefix names the module (a face nested in a lower package stays a face)."""
    found = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            found = rank
    return found


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """`a -> b (lower -> higher)` for each import that reaches up a layer."""
    found = []
    for a, targets in edges.items():
        for b in targets:
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb > la:
                found.append(f"{a} -> {b} ({LAYERS[la][0]} -> {LAYERS[lb][0]})")
    return sorted(found)


UPWARD_CASES = [  # each the shape of an import the tree once had, or could grow
    ({"fleet.engine.x": {"roles.jupyter"}}, ["fleet.engine.x -> roles.jupyter (engine -> roles)"]),
    ({"fleet.inventory.z": {"fleet.course.imaging.builder"}},
     ["fleet.inventory.z -> fleet.course.imaging.builder (inventory -> course)"]),
    ({"fleet.transport.connection": {"fleet.engine.state"}},   # the keeper's folder, found by the engine's rule
     ["fleet.transport.connection -> fleet.engine.state (transport -> engine)"]),
    ({"fleet.inventory.model": {"fleet.transport.base"}},
     ["fleet.inventory.model -> fleet.transport.base (inventory -> transport)"]),
    ({"fleet.aws.bake": {"fleet.course.imaging.builder"}},   # bake lived in the cloud layer
     ["fleet.aws.bake -> fleet.course.imaging.builder (library -> course)"]),
    ({"fleet.course.access": {"fleet.cli"}}, ["fleet.course.access -> fleet.cli (course -> faces)"]),
    ({"fleet.app": {"fleet.commands.local"}}, ["fleet.app -> fleet.commands.local (library -> faces)"]),
    ({"fleet.aws.instances": {"fleet.cli_cloud"}}, ["fleet.aws.instances -> fleet.cli_cloud (library -> faces)"]),
    ({"fleet.cli": {"roles.jupyter", "fleet.course.access"}, "fleet.cli_cloud": {"fleet.aws.cloud"},
      "fleet.transport.t": {"fleet.errors"}, "fleet.engineering": {"roles"}}, []),
]


@pytest.mark.parametrize("edges,expected", UPWARD_CASES)
def test_the_upward_import_finder(edges, expected):
    assert upward_imports(edges) == expected


def test_no_module_imports_from_a_layer_above_its_own():
    known = {module_name(p) for p in [*SOURCES, *PROJECT.glob("bench/**/*.py")]}
    edges = {module_name(p): imports(p, known) for p in [*SOURCES, *PROJECT.glob("bench/**/*.py")]}
    assert upward_imports(edges) == []


def test_every_module_has_a_layer():
    helpers = {"fleet", "fleet.errors", "fleet.atomic", "fleet.yamlfile", "fleet.shell"}
    loose = sorted(n for n in (module_name(p) for p in SOURCES) if layer_of(n) is None and n not in helpers)
    assert loose == []


# What a role knows, only that role writes down; everyone else imports it from the role.
ROLE_FACTS = [
    ("fleet-idle-check.timer", "roles/autostop/__init__.py: UNIT"),
    ("idle-state.json", "roles/autostop/__init__.py: STATE_FILE"),
    ('"0.0.0.0"', "roles/jupyter/__init__.py: local_address()"),
]


@pytest.mark.parametrize("literal,owner", ROLE_FACTS, ids=[f[0] for f in ROLE_FACTS])
def test_roles_facts_are_imported_not_retyped(literal, owner):
    role = PROJECT / owner.split(":")[0]
    retyped = [str(p.relative_to(PROJECT)) for p in PROJECT.glob("fleet/**/*.py") if literal in p.read_text()]
    retyped += [str(p.relative_to(PROJECT)) for p in PROJECT.glob("roles/**/*.py")
                if p != role and literal in p.read_text()]
    assert retyped == [], f"{literal} is retyped here; import it from {owner}"
