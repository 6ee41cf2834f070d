"""Reading a batch file for ``bmsctl submit``: bounded, and every problem said in one line.

A batch file is read from bytes we bound, decoded as UTF-8, parsed (YAML, or JSON by its
suffix) into a node graph first, and measured before any Python object is built: a YAML alias
counts as a copy of what it names, so an alias bomb (a few lines that expand to millions of
nodes) is refused before it costs memory, as is nesting deeper than the spec can use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from models.spec import BatchSpec, parse_batch

#: A batch file larger than this is refused unread (the API refuses such bodies too).
MAX_FILE_BYTES = 8 * 1024 * 1024
#: Nodes of the data once every alias is expanded.
MAX_NODES = 200_000
#: Levels of nesting (the spec's deepest field is about 6 levels down).
MAX_DEPTH = 32


class BatchFileError(ValueError):
    """The file cannot be turned into batch data; the message is one line."""


def load_batch(path: Path) -> BatchSpec:
    """Read, bound, parse and validate ``path``.

    :raises BatchFileError: the file is missing, unreadable, too big, not UTF-8, not YAML/JSON,
        too deeply nested, or its aliases expand too far.
    :raises models.spec.SpecError: it parses but a field is invalid.
    """
    return parse_batch(read_data(path))


def read_data(path: Path) -> Any:
    text = _read_text(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            _measure_data(data)
            return data
        return _load_yaml(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise BatchFileError(f"JSON syntax error at {where}: {exc.msg}") from None
    except RecursionError:
        raise BatchFileError(f"nested more than {MAX_DEPTH} levels deep") from None


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BatchFileError("no such file") from None
    except IsADirectoryError:
        raise BatchFileError("is a directory, not a batch file") from None
    except OSError as exc:
        raise BatchFileError(f"cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise BatchFileError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchFileError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None


def _load_yaml(text: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise BatchFileError("is empty")
        _measure_node(node, {}, 1)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise BatchFileError(_yaml_problem(exc)) from None
    except yaml.YAMLError as exc:
        raise BatchFileError(f"YAML error: {_one_line(str(exc))}") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or exc.context or "cannot be parsed"
    return f"YAML syntax error{where}: {_one_line(problem)}"


def _measure_node(node: yaml.Node, seen: dict[int, tuple[int, int]], depth: int) -> tuple[int, int]:
    """Nodes below ``node`` with aliases expanded (an alias re-uses its target's count), and
    the height of that subtree; refused past the bounds."""
    known = seen.get(id(node))
    if known is None:
        if depth > MAX_DEPTH:
            raise BatchFileError(f"nested more than {MAX_DEPTH} levels deep")
        total, height = 1, 1
        for child in _children(node):
            size, below = _measure_node(child, seen, depth + 1)
            total, height = total + size, max(height, below + 1)
            if total > MAX_NODES:
                raise BatchFileError(
                    f"expands to more than {MAX_NODES} values (YAML aliases copy what they name)"
                )
        known = seen[id(node)] = (total, height)
    if depth + known[1] - 1 > MAX_DEPTH:
        raise BatchFileError(f"nested more than {MAX_DEPTH} levels deep")
    return known


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _measure_data(data: Any) -> None:
    """The same bounds for JSON data (which has no aliases)."""
    count = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise BatchFileError(f"nested more than {MAX_DEPTH} levels deep")
        if count > MAX_NODES:
            raise BatchFileError(f"holds more than {MAX_NODES} values")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _one_line(text: str) -> str:
    return " ".join(text.split())
