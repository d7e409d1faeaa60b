"""A manifest as the API server reads it, before any rule is checked.

The API server normalises two things before validating a custom resource, and ``fedkube
validate`` must do the same or it would refuse what ``kubectl apply`` accepts:

- a ``null`` given for a field that is not nullable is pruned, as if the field were absent
  (so ``seed: null`` means the default seed, and ``rounds: null`` a missing ``rounds``);
- a whole number written as a float (``rounds: 10.0``, ``1e3``) is an integer.

Only the typed part is normalised: free-form objects (``task.config``, volumes ...) pass
through as written, as the API server keeps them.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel


def _options(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def _item_model(annotation: Any) -> type[BaseModel] | None:
    for option in _options(annotation):
        if typing.get_origin(option) is list:
            (item,) = typing.get_args(option) or (None,)
            return _model_of(item)
    return None


def as_read_by_the_api_server(data: Any, model: type[BaseModel]) -> Any:
    """``data`` (a mapping meant for ``model``) with nulls pruned and whole floats made
    integers wherever ``model``'s fields say so; anything else is returned unchanged."""
    if not isinstance(data, dict):
        return data
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            out[key] = value  # unknown: the model reports it
            continue
        options = _options(field.annotation)
        if value is None and type(None) not in options:
            continue
        if isinstance(value, float) and value.is_integer() and int in options:
            value = int(value)
        if (sub := _model_of(field.annotation)) is not None:
            value = as_read_by_the_api_server(value, sub)
        elif (item := _item_model(field.annotation)) is not None and isinstance(value, list):
            value = [as_read_by_the_api_server(v, item) for v in value]
        out[key] = value
    return out
