"""Every test that reads ../shared carries the `data` marker in its source (issue 13: 13 tests did not).

A test reads ../shared when it uses a fixture of conftest.DATA_FIXTURES, a fixture of its module that uses one
(transitively), or a fixture or test whose code names MAMBAESR_SHARED (it finds ../shared by hand). The check reads the
test files (ast), so it covers every file whatever subset of the suite runs; conftest also adds the marker at
collection for the fixture users (test_conftest_marks_fixture_users).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import DATA_FIXTURES

TESTS = Path(__file__).resolve().parent


def _is_data_mark(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return ast.unparse(target) == "pytest.mark.data"


def _is_fixture(func: ast.FunctionDef) -> bool:
    return any(ast.unparse(d.func if isinstance(d, ast.Call) else d) == "pytest.fixture" for d in func.decorator_list)


def unmarked_data_tests(source: str) -> list[str]:
    """Names of the test functions in `source` that read ../shared without a `data` mark (own or the module's)."""
    tree = ast.parse(source)
    module_marked = False
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            module_marked = module_marked or any(_is_data_mark(m) for m in marks)
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]

    readers: set[str] = set()  # functions that find ../shared by hand, and the functions calling them

    def reads_shared(func: ast.AST) -> bool:  # reads the variable (os.environ.get / [...] / getenv) or calls a reader
        def is_variable(n: ast.AST) -> bool:
            return isinstance(n, ast.Constant) and n.value == "MAMBAESR_SHARED"

        return any(
            (isinstance(n, ast.Call) and (any(map(is_variable, n.args)) or isinstance(n.func, ast.Name) and n.func.id in readers))
            or (isinstance(n, ast.Subscript) and is_variable(n.slice))
            for n in ast.walk(func)
        )

    data_fixtures = set(DATA_FIXTURES)
    changed = True
    while changed:  # to a fixed point: readers, and fixtures using data fixtures or readers
        changed = False
        for f in functions:
            if f.name.startswith("test_") and not _is_fixture(f):
                continue
            uses_data = _is_fixture(f) and {a.arg for a in f.args.args} & data_fixtures
            if f.name not in readers and (uses_data or reads_shared(f)):
                readers.add(f.name)
                data_fixtures |= {f.name} if _is_fixture(f) else set()
                changed = True
    return [
        f.name
        for f in functions
        if f.name.startswith("test_") and not _is_fixture(f)
        and ({a.arg for a in f.args.args} & data_fixtures or reads_shared(f))
        and not module_marked and not any(_is_data_mark(d) for d in f.decorator_list)
    ]  # fmt: skip


def test_every_test_reading_shared_data_is_marked():
    missing = {path.name: names for path in sorted(TESTS.glob("test_*.py")) if (names := unmarked_data_tests(path.read_text()))}
    assert not missing, f"tests reading ../shared without @pytest.mark.data: {missing}"


def test_the_check_finds_unmarked_tests():
    source = '''
import os, pytest

@pytest.fixture
def samples(shared_dir):
    return shared_dir / "x"

def find_shared():
    return os.environ.get("MAMBAESR_SHARED")

@pytest.fixture
def by_hand():
    return find_shared()

def test_direct(benchmark_dir): ...
def test_through_a_fixture(samples): ...
def test_by_hand(by_hand): ...
def test_env():
    assert os.environ.get("MAMBAESR_SHARED")
@pytest.mark.data
def test_marked(dvmsr_weights): ...
@pytest.mark.data
@pytest.mark.parametrize("k", [1])
def test_marked_and_parametrized(samples, k): ...
def test_plain(tmp_path): ...
'''
    assert unmarked_data_tests(source) == ["test_direct", "test_through_a_fixture", "test_by_hand", "test_env"]
    assert unmarked_data_tests("import pytest\npytestmark = [pytest.mark.slow, pytest.mark.data]\n" + source) == []
    # the real suite has such tests, so the check above is not vacuous
    assert "test_fixture_rails" in unmarked_data_tests((TESTS / "test_power.py").read_text().replace("@pytest.mark.data\n", ""))


def test_conftest_marks_fixture_users():
    from conftest import pytest_collection_modifyitems

    class Item:  # what the hook uses of a pytest.Item
        def __init__(self, fixturenames: list[str]) -> None:
            self.fixturenames, self.keywords, self.marks = fixturenames, {}, []

        def add_marker(self, mark: pytest.MarkDecorator) -> None:
            self.marks.append(mark.name)

    items = [Item(["tmp_path", "benchmark_dir", "shared_dir"]), Item(["tmp_path"])]
    pytest_collection_modifyitems(None, items)
    assert [item.marks for item in items] == [["data"], []]
