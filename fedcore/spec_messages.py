"""Pydantic's validation errors as sentences in the user's terms.

``fedkube validate``, ``fedkube run`` and the operator show a user what is wrong with a job in
the job file's own words: the field's path as written (``spec.clients[1].replicas``), the
value found, what it must be and how to fix it. Pydantic's own texts name Python classes
("valid dictionary or instance of ClientSpec") and grammar of its own ("at least 1 entries"),
so every error type a FederatedJob can produce is translated here; an unknown type falls back
to pydantic's message with its class-speak removed, never to a class name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

_ORDER = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}
_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping (key: value pairs)",
    "model_type": "a mapping (key: value pairs)",
    "model_attributes_type": "a mapping (key: value pairs)",
    "list_type": "a list",
}
_FIXES = {
    "an integer": "write a whole number",
    "a whole number": "write a whole number",
    "a number": "write a number",
    "true or false": "write true or false",
    "a string": "quote the value",
}
_CROSS_FIELD_LINE = re.compile(r"^[A-Za-z][\w.\[\]'/-]*: ")


def kind_of(value: Any) -> str:
    """A value's type in YAML's terms (not Python's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "a value of another type"


def shown(value: Any) -> str:
    """The value as the user wrote it, in JSON (cut at 80 characters)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def field_path(loc: tuple[int | str, ...], root: str) -> str:
    """``("clients", 1, "name")`` under ``spec`` as ``spec.clients[1].name``."""
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _entries(count: Any) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


def explain(item: ErrorDetails, hints: Mapping[str, str]) -> str:
    """One sentence for one pydantic error: what is wrong, the value, and the fix.

    ``hints`` describe regular expressions of ``pattern`` constraints in words.
    """
    kind, ctx, got = item["type"], item.get("ctx") or {}, item.get("input")
    if kind == "missing":
        return "required field is missing; add it"
    if kind == "extra_forbidden":
        name = str(item["loc"][-1]) if item["loc"] else ""
        if "_" in name.strip("_"):
            return f"unknown field; field names are camelCase: write {to_camel(name)}"
        return (
            "unknown field; remove it or fix its spelling (field names are camelCase, "
            "see `fedkube validate --schema`)"
        )
    if kind in _EXPECTED:
        wanted = _EXPECTED[kind]
        fix = _FIXES.get(wanted)
        if fix and isinstance(got, str):
            fix += ", without quotes"
        what = shown(got) if got is None else f"{shown(got)}, {kind_of(got)}"
        return f"must be {wanted} (got {what})" + (f"; {fix}" if fix else "")
    if kind in _ORDER:
        bound = next(iter(ctx.values()), "?")
        return f"must be {_ORDER[kind]} {bound} (got {shown(got)})"
    if kind == "finite_number":
        return f"must be a finite number (got {shown(got)})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')} (got {shown(got)})"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        described = hints.get(pattern, f"of the form {pattern}")
        return f"must be {described} (got {shown(got)})"
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"needs at least {ctx.get('min_length')} characters (got {shown(got)})"
    if kind == "string_too_long":
        length = len(got) if isinstance(got, str) else "more"
        return f"allows at most {ctx.get('max_length')} characters (got {length})"
    if kind == "too_short":
        actual = ctx.get("actual_length", 0)
        return f"needs at least {_entries(ctx.get('min_length'))} (got {actual or 'none'})"
    if kind == "too_long":
        actual = ctx.get("actual_length")
        limit = _entries(ctx.get("max_length"))
        return f"allows at most {limit} (got {actual})" if actual else f"allows at most {limit}"
    return f"{_plain(item['msg'])} (got {shown(got)})"


def _plain(message: str) -> str:
    # Pydantic's generic texts, without the Python class names they may carry.
    message = message.replace("Input should be", "must be").replace("instance of ", "")
    return re.sub(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)+\b", "object", message)


def problems(error: ValidationError, root: str, hints: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every problem of ``error`` as ``(field, message)``, fields rooted at ``root``.

    A cross-field validator's ``ValueError`` may name sub-fields itself, one problem a line
    (``clients[2].name: ...``): each line becomes a problem at that sub-field.
    """
    found: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        field = field_path(tuple(item["loc"]), root)
        if item["type"] != "value_error":
            found.append((field or "<document>", explain(item, hints)))
            continue
        for line in item["msg"].removeprefix("Value error, ").split("\n"):
            where, message = field, line
            if _CROSS_FIELD_LINE.match(line):
                sub, _, message = line.partition(": ")
                where = f"{field}.{sub}" if field else sub
            found.append((where or "<document>", message))
    return found
