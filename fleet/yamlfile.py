"""Load YAML with line numbers, and turn schema violations into messages naming file, line and key."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from fleet.errors import InputError, InputErrors

# libyaml's parser when PyYAML was built with it: parsing is most of a no-op run's start-up.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Lines = dict[tuple, int]


def load(path: Path) -> tuple[Any, Lines]:
    """Parse a YAML file; return the data and a map from key path to line number."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=str(path)) from None
    loader = _Loader(text)
    try:  # one parse: the node tree gives line numbers, the same tree gives the data
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"invalid YAML: {problem}", file=where) from None
    finally:
        loader.dispose()
    lines: Lines = {}
    _record_lines(node, (), lines, path)
    return data, lines


def _record_lines(node: yaml.Node | None, path: tuple, lines: Lines, file: Path) -> None:
    if node is None:
        return
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            child = path + (key.value,)
            line = key.start_mark.line + 1
            if key.value in seen:
                # PyYAML silently keeps the last of two equal keys: a duplicate host would vanish.
                raise InputError(f"duplicate key '{key.value}' (first defined on line {seen[key.value]})",
                                 file=f"{file}:{line}", key=dotted(child))
            seen[key.value] = line
            lines[child] = line
            _record_lines(value, child, lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            _record_lines(value, path + (index,), lines, file)


def where(path: Path | str, lines: Lines, key: Iterable) -> str:
    key = tuple(key)
    while key and key not in lines:
        key = key[:-1]
    line = lines.get(key)
    return f"{path}:{line}" if line else str(path)


def dotted(key: Iterable) -> str:
    return ".".join(str(part) for part in key) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> tuple[tuple, str]:
    path = tuple(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        key = path + (extra[0],) if extra else path
        return key, f"unknown key (expected one of: {', '.join(allowed)})"
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return path, f"expected {_article(expected)}, got {type(error.instance).__name__} {error.instance!r}"
    if kind == "enum":
        return path, f"expected one of {error.validator_value}, got {error.instance!r}"
    if kind == "required":
        return path, error.message.replace("is a required property", "is required")
    return path, error.message


def _article(expected: str) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "boolean": "true or false", "number": "a number", "null": "nothing"}
    return names.get(expected, expected)


def validate(data: Any, schema: dict, path: Path | str, lines: Lines, prefix: tuple = ()) -> None:
    """Raise one InputErrors listing every schema violation, each with file:line and key."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        key, message = _describe(error)
        errors.append(InputError(message, file=where(path, lines, prefix + key), key=dotted(prefix + key)))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputErrors(errors)
