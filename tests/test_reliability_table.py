"""`RELIABILITY.md` names, for each case, the tests that check it: every one of them must exist."""

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# `file.py::test_name`, or `::test_name` for another test of the file named last
REFERENCE = re.compile(r"`((?:[\w/]+\.py)?)::(test_\w+)`")


def test_every_test_named_in_the_reliability_table_exists():
    table = (TESTS.parent / "RELIABILITY.md").read_text(encoding="utf-8")
    defined = {}
    missing = []
    for line in table.splitlines():
        current = None
        for file_name, test_name in REFERENCE.findall(line):
            current = file_name or current
            assert current is not None, f"{test_name} names no file in: {line[:120]}"
            if current not in defined:
                source = (TESTS / current).read_text(encoding="utf-8")
                nodes = ast.walk(ast.parse(source))
                defined[current] = {node.name for node in nodes if isinstance(node, ast.FunctionDef)}
            if test_name not in defined[current]:
                missing.append(f"{current}::{test_name}")
    assert defined, "RELIABILITY.md names no test"
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"
