"""Parsed JSON checked against a frozen dataclass's annotated fields: the one validator of
the store's JSON records (manifest, shard and video metadata), so that a malformed record
is an error naming the record and the field, never a ``TypeError`` deep in a reader."""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Any


def short_json(value: Any, limit: int = 60) -> str:
    """``value`` as JSON, cut to ``limit`` characters, for error messages."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fits(value: Any, hint: Any) -> bool:
    """Whether parsed JSON ``value`` can be a dataclass field annotated ``hint`` (JSON lists
    stand for tuples; a nested dataclass needs an object, which its own parser checks)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        # bool is an int in Python, never a count in this format; JSON writes 50.0 as 50.
        return isinstance(value, (int, hint)) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if dataclasses.is_dataclass(hint) or origin is dict:
        return isinstance(value, dict)
    if origin is tuple:
        if not isinstance(value, list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _fits(v, h) for v, h in zip(value, args, strict=True)
        )
    raise TypeError(f"no JSON rule for fields annotated {hint}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    # Evaluating the annotations costs 0.1 ms a class: once, not once per planned video.
    return typing.get_type_hints(cls)


def checked_fields(
    cls: type, data: Any, what: str, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Parsed JSON ``data`` checked as the fields of dataclass ``cls``: an object with every
    field (``defaults`` fills absent ones; fields with a default may be absent), no other
    key, each value of its field's type. Returns a new dict; raises a ValueError that names
    ``what`` and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} is {short_json(data)}, not a JSON object")
    data = {**(defaults or {}), **data}
    hints = _field_types(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{what} has unknown fields {', '.join(map(repr, unknown))}")
    for name, f in known.items():
        if name in data:
            if not _fits(data[name], hints[name]):
                expected = str(hints[name]).replace("typing.", "")
                if isinstance(hints[name], type):
                    expected = hints[name].__name__
                raise ValueError(
                    f"{what} field {name!r} is {short_json(data[name])}, expected {expected}"
                )
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{what} lacks field {name!r}")
    return data
