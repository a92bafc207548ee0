"""Raw config values: YAML text parsed safely, and its scalars (or command-line text) converted
to their declared types.

By the declared type, never by YAML's guess: PyYAML reads `3e-4` as a string and `yes` as a
boolean. Every refusal is a CharlmError naming the dotted key, the value and what is accepted.
A key given twice in one mapping is refused with both lines (PyYAML would keep the last one).
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

import yaml

from charlm.errors import CharlmError


def type_name(tp: Any) -> str:
    """How a declared type reads in an error message: `whole number`, `lstm / gru`, ..."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " / ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{type_name(inner[0])} or empty"
    if origin is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    names = {int: "whole number", float: "number", str: "string", bool: "true/false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


NULLS = {"null", "none", "~", ""}
TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert one raw value (from YAML or the command line) to the declared type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in NULLS):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce(key, value, inner[0])
    if origin is Literal:
        choices = typing.get_args(tp)
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in choices:
            raise CharlmError(
                f"{key}: {value!r} is not accepted; expected one of {', '.join(choices)}"
            )
        return text
    if origin is tuple:  # `tuple[X, ...]`: a YAML list, or `[a, b]` / `a,b` on the command line
        return tuple(coerce(key, item, typing.get_args(tp)[0]) for item in _items(key, value, tp))
    bad = CharlmError(f"{key}: {value!r} is not a valid {type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
            return value.strip().lower() in TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            number = float(value) if isinstance(value, (str, float)) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or not number.is_integer():
            raise bad
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value) if isinstance(value, (int, float, str)) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise bad
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug, not a user error


def _items(key: str, value: Any, tp: Any) -> list[Any]:
    """The items of a list value; empty (`[]`, an empty value or `null`) is no items."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if text.strip().lower() in NULLS:
            return []
        return [item.strip() for item in text.split(",")]
    if not isinstance(value, (list, tuple)):
        raise CharlmError(f"{key}: {value!r} is not a valid {type_name(tp)}, e.g. [a, b]")
    return list(value)


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (merge keys `<<` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise _DuplicateKey(
                    None,
                    None,
                    f"duplicate key {key!r} on lines {first} and {line}; give each key once",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str = "config") -> Any:
    """Parse YAML text safely; every failure is a CharlmError naming `where`."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python tags
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(e.problem or e.context or "invalid YAML").split())
        tag = isinstance(e, yaml.constructor.ConstructorError) and not isinstance(e, _DuplicateKey)
        if tag and "tag" in problem:
            problem += " (only plain YAML is read: tags such as !!python/object are refused)"
        raise CharlmError(f"{where}: YAML error at {at}{problem}") from None
    except yaml.YAMLError as e:
        raise CharlmError(f"{where}: invalid YAML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise CharlmError(f"{where}: YAML nested too deeply to be a config") from None
    if raw is None:
        raise CharlmError(f"{where}: the file is empty; expected a mapping of sections")
    return raw
