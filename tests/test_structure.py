"""The import rules of docs/architecture.md, read from the source.

Every `import` and `from ... import` in wecomd/ (at module level or inside a function) is an edge
of the module graph. The rules below are the ones the architecture document states; each check
is also run on a small graph that breaks it, so none of them can pass by finding nothing.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wecomd"

Graph = Dict[str, Set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> Dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: Iterable[str]) -> Set[str]:
    """What `module` imports: wecomd modules by name (a submodule when one is named), others by top name."""
    known = set(known)
    found: Set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            submodules = {"%s.%s" % (target, alias.name) for alias in node.names} & known
            found.update(submodules)
            if len(submodules) < len(node.names):  # names that are attributes of the package itself
                found.add(target)
    return {name for name in found if name and name != module}


def import_graph() -> Graph:
    modules = source_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def inside(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def breaches(graph: Graph, sources: Tuple[str, ...], forbidden: Tuple[str, ...],
             allowed: Tuple[str, ...] = ()) -> List[str]:
    return sorted("%s imports %s" % (module, target) for module, targets in graph.items()
                  if inside(module, *sources) for target in targets
                  if inside(target, *forbidden) and target not in allowed)


def cycles(graph: Graph) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), among wecomd modules only."""
    nodes = [name for name in graph if name.startswith("wecomd")]
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return found


# The rules, as docs/architecture.md states them: (sources, forbidden imports, allowed exceptions).
WEB_AND_ABOVE = ("wecomd.handlers", "wecomd.app", "wecomd.services", "wecomd.cli")
DOMAIN = ("wecomd.inbox", "wecomd.automation", "wecomd.workers", "wecomd.live")
RULES = {
    "protocol code imports nothing from web or store":
        (("wecomd.wecom",), WEB_AND_ABOVE + DOMAIN + ("wecomd.store", "peewee", "playhouse"), ()),
    "the store imports nothing from the layers above it":
        (("wecomd.store",), WEB_AND_ABOVE + DOMAIN + ("tornado",), ()),
    "handlers never reach into store internals":
        (("wecomd.handlers",), ("wecomd.store", "peewee", "playhouse"), ("wecomd.store",)),
    "the callback handler imports no automation, rule, worker or storage module":
        (("wecomd.handlers.callback",), ("wecomd.automation", "wecomd.workers", "wecomd.store", "peewee"), ()),
    "only the command line imports the command line":
        (tuple(name for name in ("wecomd.app", "wecomd.services", "wecomd.handlers", "wecomd.inbox",
                                 "wecomd.automation", "wecomd.workers", "wecomd.store", "wecomd.wecom")),
         ("wecomd.cli",), ()),
}


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_the_graph_is_read_from_the_source(graph):
    # A reader that found nothing would pass every rule below.
    assert len(graph) > 40
    assert "wecomd.wecom.crypto" in graph["wecomd.services"] or any(
        "wecomd.wecom" in target for target in graph["wecomd.services"])
    assert any(target.startswith("tornado") for target in graph["wecomd.app"])


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(graph, rule):
    sources, forbidden, allowed = RULES[rule]
    assert any(inside(module, *sources) for module in graph), "no module is subject to: %s" % rule
    assert breaches(graph, sources, forbidden, allowed) == [], rule


def test_there_are_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_package_root_holds_the_daemons_own_pieces(graph):
    root = sorted(name for name in graph if name.count(".") == 1 and (PACKAGE / (name.split(".")[1] + ".py")).exists())
    assert len(root) <= 24, root


# Each check catches what it is for.
def test_a_cycle_is_found():
    bad = {"wecomd.a": {"wecomd.b"}, "wecomd.b": {"wecomd.c"}, "wecomd.c": {"wecomd.a"}, "wecomd.d": {"wecomd.a"}}
    assert cycles(bad) == [["wecomd.a", "wecomd.b", "wecomd.c"]]


@pytest.mark.parametrize("rule,module,target", [
    ("protocol code imports nothing from web or store", "wecomd.wecom.crypto", "wecomd.store.messages"),
    ("protocol code imports nothing from web or store", "wecomd.wecom.api", "wecomd.handlers.base"),
    ("handlers never reach into store internals", "wecomd.handlers.api", "wecomd.store.models"),
    ("handlers never reach into store internals", "wecomd.handlers.api", "peewee"),
    ("the callback handler imports no automation, rule, worker or storage module",
     "wecomd.handlers.callback", "wecomd.automation.rules"),
    ("only the command line imports the command line", "wecomd.services", "wecomd.cli.doctor"),
])
def test_a_breach_is_found(rule, module, target):
    sources, forbidden, allowed = RULES[rule]
    assert breaches({module: {target}}, sources, forbidden, allowed) == ["%s imports %s" % (module, target)]


def test_relative_and_submodule_imports_are_resolved(tmp_path):
    package = tmp_path / "wecomd" / "store"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .models import Message\nfrom wecomd.wecom import crypto\n"
                                         "from wecomd import config, __version__\n")
    names = {"wecomd.store.models", "wecomd.wecom.crypto", "wecomd.wecom", "wecomd.config", "wecomd"}
    found = imports_of("wecomd.store", package / "__init__.py", names)
    # `from wecomd.wecom import crypto` names a submodule only; `__version__` is the package's own.
    assert found == {"wecomd.store.models", "wecomd.wecom.crypto", "wecomd.config", "wecomd"}
