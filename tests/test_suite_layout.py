"""The test suite's own layout: shared helpers come from tests/support/, never from conftest.py or
another test module, and the worker tests use the production DbWriter, not a stand-in."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MODULES = sorted(p for p in TESTS.rglob("*.py") if "fuzz" not in p.parts and p.name != "conftest.py")


def imported(path: Path) -> set:
    """Every module name `path` imports (absolute imports; tests/ is on sys.path)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def db_stand_ins(path: Path) -> list:
    """`db(fn, ...)` functions that run store calls on an executor instead of the DbWriter."""
    source = path.read_text(encoding="utf-8")
    return [node.name for node in ast.walk(ast.parse(source, str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "db"
            and "run_in_executor" in (ast.get_source_segment(source, node) or "")]


def test_the_layout_is_read(tmp_path):
    assert len(MODULES) > 40
    assert "support.harness" in imported(TESTS / "test_outbox.py")
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text("import conftest\nfrom test_outbox import x\n\n\nclass H:\n"
                        "    async def db(self, fn):\n        return await loop.run_in_executor(None, fn)\n")
    assert {"conftest", "test_outbox"} <= imported(stand_in)
    assert db_stand_ins(stand_in) == ["db"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TESTS)))
def test_no_module_imports_conftest_or_another_test_module(path):
    bad = sorted(name for name in imported(path)
                 if name == "conftest" or name.split(".")[-1].startswith("test_"))
    assert bad == [], "%s imports %s: shared helpers belong in tests/support/" % (path.name, bad)


def test_no_test_runs_store_calls_on_a_thread_pool_of_its_own():
    """The workers' tests run on support.harness (the production DbWriter); a thread pool standing
    in for it would test a different commit behaviour."""
    assert {path.name: db_stand_ins(path) for path in MODULES if db_stand_ins(path)} == {}
