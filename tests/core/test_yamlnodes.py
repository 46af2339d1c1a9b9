"""The one YAML reader and the one problem-list error."""

from __future__ import annotations

from pathlib import Path

import pytest

from permgate.core.errors import MapError, Problem, ProblemList
from permgate.core.yamlnodes import NodeReader, compose, read_text

PROBLEM_LINES = [
    ("everything", Problem("bad", "f.yaml", 3, "a.b"), "f.yaml:3: a.b: bad"),
    ("no-line", Problem("cannot read", "f.yaml"), "f.yaml: cannot read"),
    ("no-file", Problem("expected a number", where="PERMGATE_X"), "PERMGATE_X: expected a number"),
    ("only-what", Problem("nothing to serve"), "nothing to serve"),
]


@pytest.mark.parametrize(
    ("problem", "line"), [c[1:] for c in PROBLEM_LINES], ids=[c[0] for c in PROBLEM_LINES]
)
def test_a_problem_leaves_out_what_it_does_not_know(problem: Problem, line: str) -> None:
    """FILE:LINE: WHERE: WHAT, without the parts that are unknown."""
    assert str(problem) == line


def test_a_problem_list_gives_one_line_per_problem() -> None:
    """Plain strings are problems too; errors, problems and str() agree."""
    error = ProblemList([Problem("bad", "f.yaml", 1, "a"), "listen: null: nothing to serve"])
    assert error.errors == error.problems == ["f.yaml:1: a: bad", "listen: null: nothing to serve"]
    assert str(error) == "f.yaml:1: a: bad\nlisten: null: nothing to serve"


def read(text: str) -> tuple[NodeReader, object]:
    root = compose(text, "f.yaml", ProblemList)
    assert root is not None
    reader = NodeReader("f.yaml", "the file")
    lines: dict[tuple[str | int, ...], int] = {}
    return reader, reader.plain(root, (), lines)


def test_plain_data_keeps_the_first_of_a_repeated_key_and_reports_it() -> None:
    """Plain YAML loading lets the last repeated key win silently; the reader refuses it."""
    reader, data = read("a:\n  b: 1\n  b: 2\n")
    assert data == {"a": {"b": 1}}
    assert [str(p) for p in reader.problems] == ["f.yaml:3: a.b: repeated key (first on line 2)"]


def test_a_key_that_is_not_a_name_is_reported() -> None:
    """A list or number as a key names the mapping it is in."""
    root = compose("a:\n  [x]: 1\n", "f.yaml", ProblemList)
    assert root is not None
    reader = NodeReader("f.yaml", "the file")
    keys = reader.mapping(root, "", ("a",))
    assert keys is not None
    reader.mapping(keys["a"][1], "a", ("b",))
    assert [str(p) for p in reader.problems] == ["f.yaml:2: a: a key must be a name, got a list"]


def test_the_problems_are_in_line_order_and_raised_together() -> None:
    """check() raises the requested subclass with every problem, ordered by line."""
    reader = NodeReader("f.yaml", "the file")
    reader.problem(5, "b", "second")
    reader.problem(2, "a", "first")
    with pytest.raises(MapError) as caught:
        reader.check(MapError)
    assert caught.value.errors == ["f.yaml:2: a: first", "f.yaml:5: b: second"]


def test_a_syntax_error_names_its_line() -> None:
    """A half-written file is one problem on the line the parser stopped at."""
    with pytest.raises(MapError) as caught:
        compose("a: 1\nb: [unclosed\n", "f.yaml", MapError)
    (line,) = caught.value.errors
    assert line.startswith("f.yaml:3: YAML syntax error: ")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    """A byte that is not UTF-8 is reported on its line, not as a decoding traceback."""
    path = tmp_path / "f.yaml"
    path.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(MapError) as caught:
        read_text(path, "the endpoint map", MapError)
    assert caught.value.errors == [f"{path}:2: the endpoint map is not UTF-8 text"]
