"""Bounds a batch is held to before any copy of it is made: nesting, values, control characters.

The walk is iterative and stops at its bounds, so no input (a 100,000-level nesting, a YAML
structure that refers to itself, an alias bomb) can exhaust the stack, the memory or the time
of the process that checks it. Each problem is named by its field path, like the spec's errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

#: Containers a value may sit in, the batch itself included (a real batch needs about 7).
MAX_DEPTH = 32
#: Values (containers and scalars) of a batch as sent; ``defaults`` is counted once.
MAX_VALUES = 1_000_000
#: Values of a batch once ``defaults`` is merged into each server and ``count`` expanded.
MAX_EXPANDED_VALUES = 1_000_000
#: Errors reported for one batch: past this, validation stops (its cost stays bounded too).
MAX_ERRORS = 100

#: C0 and C1 control characters and DEL: no name, id, tag or metadata of the cloud takes them,
#: and PostgreSQL cannot store NUL in text or JSON.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Path = tuple[Any, ...]


def field_path(location: Path) -> str:
    """``('servers', 3, 'nics', 0, 'subnet_id')`` -> ``servers[3].nics[0].subnet_id``."""
    path = ""
    for part in location:
        if isinstance(part, int) and not isinstance(part, bool):
            path += f"[{part}]"
        elif not path:
            path = str(part)
        else:
            path += f".{part}"
    return path or "<root>"


def control_characters(text: str) -> str | None:
    """The message for ``text`` if it holds control characters, else ``None``."""
    found = sorted(set(CONTROL_CHARACTERS.findall(text)))
    if not found:
        return None
    shown = ", ".join(f"U+{ord(c):04X}" for c in found[:5])
    return f"must not contain control characters (found {shown})"


def _children(value: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(value, dict):
        yield from value.items()
    elif isinstance(value, list | tuple):
        yield from enumerate(value)


def check_shape(
    data: Any, root: Path = (), max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES
) -> tuple[list[tuple[str, str]], int]:
    """Walk ``data`` once: ``(errors, values)``.

    Errors: a container nested deeper than ``max_depth`` (not entered), a string or key with
    control characters, more than ``max_values`` values (the walk stops there). At most
    :data:`MAX_ERRORS` are returned.
    """
    errors: list[tuple[str, str]] = []
    values = 0
    stack: list[tuple[Any, Path, int]] = [(data, root, 1)]
    while stack and len(errors) < MAX_ERRORS:
        value, path, depth = stack.pop()
        values += 1
        if values > max_values:
            errors.append((field_path(root), f"more than {max_values:,} values: split the batch"))
            break
        if isinstance(value, str):
            problem = control_characters(value)
            if problem:
                errors.append((field_path(path), problem))
            continue
        if not isinstance(value, dict | list | tuple):
            continue
        if depth > max_depth:
            errors.append((field_path(path), f"nested deeper than {max_depth} levels"))
            continue
        children = []
        for key, child in _children(value):
            if isinstance(key, str) and (problem := control_characters(key)):
                errors.append((field_path(path + (key,)), f"key {problem}"))
                continue
            children.append((child, path + (key,), depth + 1))
        stack.extend(reversed(children))  # popped in document order
    return errors, values


def count_values(data: Any, limit: int = MAX_VALUES) -> int:
    """Values in ``data`` (containers and scalars), counting no further than ``limit``."""
    values = 0
    stack = [data]
    while stack and values <= limit:
        value = stack.pop()
        values += 1
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return values


def too_deep(data: Any, max_depth: int = MAX_DEPTH) -> Path | None:
    """The path of the first container nested deeper than ``max_depth``, or ``None``."""
    stack: list[tuple[Any, Path, int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if not isinstance(value, dict | list | tuple):
            continue
        if depth > max_depth:
            return path
        stack.extend((child, path + (key,), depth + 1) for key, child in _children(value))
    return None
