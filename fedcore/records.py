"""What a record of the round protocol may hold, so that every writer's output reads back.

The store's JSON records are written by one part of fedkube and read by others (the
aggregator resuming, ``fedkube status``, the clients' round watcher, the operator). Two kinds
of values broke that promise:

* **Non-finite numbers.** JSON has no spelling for NaN or infinity: pydantic writes them as
  ``null``, which a ``float`` field then refuses, so one diverged evaluation (loss NaN) made a
  ``round.json`` nobody could read. A record written by fedkube (``RoundRecord``,
  ``FinalRecord``) therefore keeps only finite metrics: a non-finite one is moved to the
  record's ``dropped_metrics`` (metric -> ``"nan"``, ``"inf"`` or ``"-inf"``) by the record's
  own validator, so no writer can forget it, and a record an older fedkube wrote with
  ``null`` reads back the same way (``"null"``). Client metrics are listed there as
  ``<client>/<metric>``.
* **Text that JSON cannot carry.** A lone surrogate (a file name the OS could not decode,
  echoed in an error message) makes serialization fail. Every string a record is built from
  passes through ``encodable``: unencodable characters become backslash escapes; a rejection's
  detail is also cut to ``MAX_DETAIL_CHARS``.

An ``UpdateManifest`` is the opposite case: it comes from a client and is untrusted input, so
a non-finite number, an integer outside int64, too many metrics or too long a name is refused
when it is parsed (``fedcore.validation`` rejects it as ``bad-manifest``), and the aggregator
refuses manifests larger than ``MAX_MANIFEST_BYTES`` before reading them. A client keeps its
own manifests inside those limits with ``fit_metrics``.

This module imports no torch: the operator reads records.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import Field, StringConstraints

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES: Final = 64 * 1024
"""Largest update manifest the aggregator reads (64 KiB). A real one is under 2 KiB (a few
fixed fields and a handful of metrics); the cap bounds what one client makes the aggregator
read, parse and copy into ``round.json``, and still leaves room for ``MAX_METRICS`` metrics
with the longest names allowed."""
MAX_METRICS: Final = 64
"""Most metrics one manifest may carry. Tasks report a few (loss, accuracy, samples, time);
each client's metrics are copied into every round record, so this bounds a record's size at
clients x 64 numbers."""
MAX_METRIC_NAME_CHARS: Final = 64
"""Longest metric name in a manifest: a name is a label for people (``train_loss``), and a
bound keeps a record's size proportional to the number of metrics."""
MAX_DETAIL_CHARS: Final = 1000
"""Longest free-text detail kept in a record (a rejection's explanation): one readable
paragraph; a Kubernetes Event message holds 1024 characters."""
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""An integer a manifest may hold: within int64, so no arithmetic on it can surprise."""
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A float that JSON can spell (no NaN, no infinity)."""
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METRIC_NAME_CHARS)]
ManifestMetrics = Annotated[dict[MetricName, FiniteFloat], Field(max_length=MAX_METRICS)]
"""A manifest's metrics: at most ``MAX_METRICS`` finite numbers under short names."""

DROPPED_FIELD: Final = "dropped_metrics"


def safe_text(text: str, limit: int | None = None) -> str:
    """``text`` with characters JSON cannot encode (lone surrogates) as backslash escapes,
    cut to ``limit`` characters (with '...') when given."""
    clean = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is not None and len(clean) > limit:
        clean = clean[: max(0, limit - 3)] + "..."
    return clean


def encodable(value: Any) -> Any:
    """``value`` (a record's raw fields) with every string, key or value at any depth, made
    encodable by ``safe_text``; other values are returned as they are."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, Mapping):
        return {encodable(k): encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v) for v in value]
    return value


def non_finite_spelling(value: Any) -> str | None:
    """How a metric value that JSON cannot hold is recorded, or None when it is fine as is.

    ``None`` (an older fedkube's ``null``) is ``"null"``; NaN and infinities (also given as
    strings such as ``"NaN"``, which pydantic would parse into them, or as integers too large
    for a float) are ``"nan"``, ``"inf"`` or ``"-inf"``. Anything else is left for the field's
    own validation.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return None
    number: float
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            return "inf" if value > 0 else "-inf"
        return None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    if math.isfinite(number):
        return None
    if math.isnan(number):
        return "nan"
    return "inf" if number > 0 else "-inf"


def _split(metrics: Any, label: str, dropped: dict[str, str]) -> Any:
    if not isinstance(metrics, Mapping):
        return metrics
    kept: dict[Any, Any] = {}
    for name, value in metrics.items():
        key = safe_text(name) if isinstance(name, str) else name
        spelling = non_finite_spelling(value)
        if spelling is None:
            kept[key] = value
        else:
            dropped[f"{label}{key}"] = spelling
    return kept


def move_non_finite(data: Any, *, client_field: str | None = None) -> Any:
    """A record's raw fields with every non-finite metric moved to ``dropped_metrics``.

    ``metrics`` (name -> number) is always looked at; ``client_field`` names a field of
    client -> metrics whose dropped values are listed as ``<client>/<metric>``. Used as the
    ``mode="before"`` validator of records fedkube writes, so it runs for every writer and on
    every read.
    """
    if not isinstance(data, Mapping):
        return data
    fields = dict(data)
    dropped: dict[str, str] = {}
    if "metrics" in fields:
        fields["metrics"] = _split(fields["metrics"], "", dropped)
    if client_field is not None and isinstance(fields.get(client_field), Mapping):
        fields[client_field] = {
            client: _split(values, f"{safe_text(str(client))}/", dropped)
            for client, values in fields[client_field].items()
        }
    if dropped:
        log.warning("metrics that JSON cannot hold were left out of a record: %s", dropped)
        previous = fields.get(DROPPED_FIELD)
        if isinstance(previous, Mapping):
            dropped = {**previous, **dropped}
        fields[DROPPED_FIELD] = dropped
    return fields


def fit_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics a manifest can carry: finite, under ``MAX_METRIC_NAME_CHARS``, at most
    ``MAX_METRICS`` of them (in name order). What is left out is logged, never silent."""
    kept: dict[str, float] = {}
    for name in sorted(metrics):
        value = float(metrics[name])
        if not name or len(name) > MAX_METRIC_NAME_CHARS:
            log.warning(
                "metric %r left out of the manifest: names are 1 to %d characters",
                name,
                MAX_METRIC_NAME_CHARS,
            )
        elif not math.isfinite(value):
            log.warning("metric %s is %s; left out of the manifest", name, value)
        elif len(kept) >= MAX_METRICS:
            log.warning(
                "metric %s left out of the manifest: it carries at most %d", name, MAX_METRICS
            )
        else:
            kept[name] = value
    return kept


__all__ = [
    "DROPPED_FIELD",
    "MAX_DETAIL_CHARS",
    "MAX_MANIFEST_BYTES",
    "MAX_METRICS",
    "MAX_METRIC_NAME_CHARS",
    "FiniteFloat",
    "Int64",
    "ManifestMetrics",
    "MetricName",
    "encodable",
    "fit_metrics",
    "move_non_finite",
    "non_finite_spelling",
    "safe_text",
]
