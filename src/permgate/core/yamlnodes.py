"""The one YAML reader for permgate's files: marks kept, every problem collected.

The endpoint map, the policy file, the ``permgate test`` suite and ``permgate.yaml``
are all read through here, so a mistake reads the same in each of them::

    FILE:LINE: WHERE: WHAT
    map.yaml:7: endpoints[3].requires: unknown key (allowed: id, method, path, ...)
    map.yaml:9: endpoints[3].path: repeated key (first on line 8)
    map.yaml:11: endpoints[3].public: expected true or false, got a string ('yes')

The file is composed into nodes (which keep their lines), then walked by a
:class:`NodeReader`: its typed accessors record a :class:`Problem` with the path and
line and return None (or :data:`BAD`) instead of raising, so the caller carries on and
every problem of the file is reported at once. A repeated key is refused, never
silently overwritten as plain YAML loading does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import yaml

from permgate.core.errors import Problem, ProblemList

__all__ = [
    "BAD",
    "Keys",
    "NodeReader",
    "compose",
    "describe",
    "item",
    "key",
    "line_of",
    "read_text",
]

# libyaml's parser when present: ten times faster on a large map, same marks.
_COMPOSER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

BAD: Final = object()  # "already reported": a value that could not be read

Keys = dict[str, tuple[yaml.Node, yaml.Node]]  # key -> (key node, value node)

_TYPES: Final = {
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a timestamp",
}


def line_of(node: yaml.Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1


def describe(node: yaml.Node) -> str:
    """A node's type and (for scalars) value, for "expected X, got Y"."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = _TYPES.get(node.tag, node.tag)
    return "null" if kind == "null" else f"{kind} ({node.value!r})"


def key(where: str, name: object) -> str:
    """The path of key ``name`` inside ``where``: ``endpoints[3]`` + ``path``."""
    return f"{where}.{name}" if where else str(name)


def item(where: str, index: int) -> str:
    """The path of the ``index``-th (0-based) item of the list at ``where``."""
    return f"{where}[{index}]"


def read_text(path: str | os.PathLike[str], what: str, error: type[ProblemList]) -> str:
    """The UTF-8 text of the file at ``path``; ``error`` (naming ``what`` the file is,
    and the line of a byte that is not UTF-8) when it cannot be read."""
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise error([Problem(f"cannot read {what}: {exc.strerror or exc}", source)]) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error([Problem(f"{what} is not UTF-8 text", source, line)]) from exc


def compose(text: str, source: str, error: type[ProblemList]) -> yaml.Node | None:
    """The node tree of ``text`` (None for an empty document); a syntax error is
    ``error`` with its line (a half-written file, a tab for indentation...)."""
    try:
        return yaml.compose(text, Loader=_COMPOSER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise error([Problem(f"YAML syntax error: {detail}", source, line)]) from exc
    except yaml.YAMLError as exc:
        raise error([Problem(f"YAML error: {exc}", source, 1)]) from exc


class NodeReader:
    """Walks a composed tree, recording every problem with its path and line.

    ``root`` names the whole document in messages about it (``the endpoint map``).
    Each accessor reports its own problem and returns None (or :data:`BAD`); the
    caller checks :attr:`problems` (or calls :meth:`check`) when the walk is done.
    """

    def __init__(self, source: str, root: str) -> None:
        self.source = source
        self.root = root
        self._found: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    @property
    def problems(self) -> list[Problem]:
        """Every problem so far, in line order (stable for one line)."""
        return sorted(self._found, key=lambda p: p.line or 0)

    def problem(self, at: yaml.Node | int | None, where: str, what: str) -> None:
        """Record that ``where`` (a path; empty for the document) is wrong: ``what``."""
        line = line_of(at) if isinstance(at, yaml.Node) else at
        self._found.append(Problem(what, self.source, line, where or self.root))

    def note(self, at: yaml.Node | int | None, message: str) -> None:
        """Record a problem whose message names its own subject (``endpoint 'x': ...``)."""
        line = line_of(at) if isinstance(at, yaml.Node) else at
        self._found.append(Problem(message, self.source, line))

    def check(self, error: type[ProblemList]) -> None:
        """Raise ``error`` with every problem recorded, if there is any."""
        if self._found:
            raise error(self.problems)

    def wrong_type(self, node: yaml.Node, where: str, expected: str) -> None:
        """The one message for a value of the wrong type."""
        self.problem(node, where, f"expected {expected}, got {describe(node)}")

    # -- containers

    def mapping(self, node: yaml.Node, where: str, allowed: Sequence[str]) -> Keys | None:
        """Key -> (key node, value node); None (reported) when ``node`` is no mapping.
        An unknown key and a repeated key are reported and left out."""
        if not isinstance(node, yaml.MappingNode):
            self.wrong_type(node, where, "a mapping")
            return None
        found: Keys = {}
        for key_node, value_node in node.value:
            name = self._key(key_node, where)
            if name is None:
                continue
            if name not in allowed:
                self.problem(
                    key_node, key(where, name), f"unknown key (allowed: {', '.join(allowed)})"
                )
            elif name in found:
                first = line_of(found[name][0])
                self.problem(key_node, key(where, name), f"repeated key (first on line {first})")
            else:
                found[name] = (key_node, value_node)
        return found

    def pairs(self, node: yaml.Node, where: str) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
        """A mapping whose keys are names of the user's (tenant ids, header names): every
        (key, key node, value node), repeated keys reported and left out."""
        if not isinstance(node, yaml.MappingNode):
            self.wrong_type(node, where, "a mapping")
            return None
        found: dict[str, tuple[str, yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            name = self._key(key_node, where)
            if name is None:
                continue
            if name in found:
                first = line_of(found[name][1])
                self.problem(key_node, key(where, name), f"repeated key (first on line {first})")
                continue
            found[name] = (name, key_node, value_node)
        return list(found.values())

    def _key(self, key_node: yaml.Node, where: str) -> str | None:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
            return str(key_node.value)
        self.problem(key_node, where, f"a key must be a name, got {describe(key_node)}")
        return None

    def sequence(
        self, node: yaml.Node, where: str, *, null: bool = False
    ) -> list[yaml.Node] | None:
        """The items of a list; None (reported) when ``node`` is no list. With ``null``
        an empty value (``key:``) is an empty list."""
        if null and isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, where, "a list")
            return None
        return list(node.value)

    # -- scalars

    def scalar(self, node: yaml.Node, where: str, expected: str) -> object:
        """The scalar's value, or :data:`BAD` once the problem is recorded."""
        if not isinstance(node, yaml.ScalarNode):
            self.wrong_type(node, where, expected)
            return BAD
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.problem(node, where, f"cannot read the value: {exc}")
            return BAD

    def string(self, node: yaml.Node, where: str, *, empty: bool = True) -> str | None:
        """A string (not a number or boolean that YAML read from bare text)."""
        value = self.scalar(node, where, "a string")
        if value is BAD:
            return None
        if not isinstance(value, str) or (not empty and not value):
            self.wrong_type(node, where, "a string" if empty else "a non-empty string")
            return None
        return value

    def boolean(self, node: yaml.Node, where: str) -> bool | None:
        """``true`` or ``false`` (YAML's ``yes``/``on`` as well), nothing else."""
        value = self.scalar(node, where, "true or false")
        if value is BAD:
            return None
        if not isinstance(value, bool):
            self.wrong_type(node, where, "true or false")
            return None
        return value

    def choice(self, node: yaml.Node, where: str, options: Sequence[str]) -> str | None:
        """One of ``options``."""
        expected = " or ".join(repr(o) for o in options)
        value = self.scalar(node, where, expected)
        if value is BAD:
            return None
        if not isinstance(value, str) or value not in options:
            self.wrong_type(node, where, expected)
            return None
        return value

    # -- plain data

    def plain(
        self,
        node: yaml.Node,
        path: tuple[str | int, ...],
        lines: dict[tuple[str | int, ...], int],
        base: str = "",
    ) -> object:
        """The node as plain Python data (dicts, lists, scalars), for a reader that
        validates the data elsewhere (the configuration's pydantic schema). Each key's
        line goes into ``lines`` by its path below the node; a repeated key is reported
        (its path under ``base``) and the first value kept."""
        lines.setdefault(path, line_of(node))
        where = _dotted(path, base)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, object] = {}
            for name, key_node, value_node in self.pairs(node, where) or ():
                lines[(*path, name)] = line_of(key_node)
                result[name] = self.plain(value_node, (*path, name), lines, base)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [
                self.plain(child, (*path, index), lines, base)
                for index, child in enumerate(node.value)
            ]
        value = self.scalar(node, where, "a value")
        return None if value is BAD else value


def _dotted(path: tuple[str | int, ...], base: str) -> str:
    where = base
    for part in path:
        where = item(where, part) if isinstance(part, int) else key(where, part)
    return where
