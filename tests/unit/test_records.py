"""Every record a writer can build reads back, whatever values it was built from.

Round trips over each record type of the store with hostile values (NaN, infinities,
``null``, lone surrogates, long names): a record either refuses them when it is built (only
``UpdateManifest``, which is untrusted input) or holds only what JSON can carry, so the
bytes one part writes are accepted by every reader of that record type.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fedcore import layout
from fedcore.records import (
    MAX_DETAIL_CHARS,
    MAX_MANIFEST_BYTES,
    MAX_METRIC_NAME_CHARS,
    MAX_METRICS,
    fit_metrics,
)
from fedcore.signing import SigningKey, sign_manifest, verify
from tests.fixtures.fuzz import fuzz_settings, hostile_float, hostile_text, int64, metrics

KEY = SigningKey(b"k" * 64)
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FUZZ = fuzz_settings(max_examples=60)


def read_back(record: layout._Record) -> Any:
    return type(record).model_validate_json(record.to_json())


def all_finite(values: dict[str, float]) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values.values())


rejected = st.builds(
    layout.RejectedUpdate,
    client=hostile_text,
    reason=hostile_text,
    detail=hostile_text | st.text(min_size=MAX_DETAIL_CHARS, max_size=MAX_DETAIL_CHARS + 50),
)
late = st.builds(layout.LateUpdate, client=hostile_text, round=int64)
next_round = st.builds(
    layout.NextRound,
    round=int64,
    selected=st.lists(hostile_text, max_size=4),
    deadline=st.just(WHEN),
)


@FUZZ
@given(
    metrics=metrics,
    client_metrics=st.dictionaries(hostile_text, metrics, max_size=3),
    participants=st.lists(hostile_text, max_size=4),
    num_samples=st.dictionaries(hostile_text, int64, max_size=3),
    rejected=st.lists(rejected, max_size=3),
    late=st.lists(late, max_size=3),
    nxt=st.none() | next_round,
)
def test_round_record_with_hostile_values_reads_back_holding_only_finite_metrics(
    metrics: dict[str, Any],
    client_metrics: dict[str, dict[str, Any]],
    participants: list[str],
    num_samples: dict[str, int],
    rejected: list[layout.RejectedUpdate],
    late: list[layout.LateUpdate],
    nxt: layout.NextRound | None,
) -> None:
    record = layout.RoundRecord(
        round=3,
        participants=participants,
        num_samples=num_samples,
        metrics=metrics,
        client_metrics=client_metrics,
        rejected=rejected,
        late=late,
        model_key="rounds/000003/global.safetensors",
        model_sha256="0" * 64,
        started_at=WHEN,
        committed_at=WHEN,
        next=nxt,
    )

    assert read_back(record) == record
    assert all_finite(record.metrics)
    assert all(all_finite(m) for m in record.client_metrics.values())
    non_finite = sum(1 for v in metrics.values() if v is None or not math.isfinite(v))
    assert non_finite == 0 or record.dropped_metrics


@FUZZ
@given(metrics=metrics)
def test_final_record_with_hostile_metrics_reads_back(metrics: dict[str, Any]) -> None:
    record = layout.FinalRecord(rounds=5, model_sha256="1" * 64, metrics=metrics, committed_at=WHEN)

    assert read_back(record) == record
    assert all_finite(record.metrics)


@FUZZ
@given(clients=st.dictionaries(hostile_text, hostile_text, max_size=5))
def test_excluded_clients_with_hostile_text_read_back(clients: dict[str, str]) -> None:
    record = layout.ExcludedClients(clients=clients)

    assert read_back(record) == record


@FUZZ
@given(record=rejected | late | next_round)
def test_rejections_late_updates_and_next_rounds_read_back(record: layout._Record) -> None:
    assert read_back(record) == record


@FUZZ
@given(detail=st.text(min_size=0, max_size=3 * MAX_DETAIL_CHARS))
def test_a_rejection_detail_is_kept_to_one_paragraph(detail: str) -> None:
    record = layout.RejectedUpdate(client="a", reason="internal-error", detail=detail)

    assert len(record.detail) <= MAX_DETAIL_CHARS


@FUZZ
@given(
    metrics=st.dictionaries(hostile_text, hostile_float, max_size=MAX_METRICS + 10),
    client=hostile_text,
    num_samples=int64,
    created=st.datetimes(timezones=st.just(UTC)),
)
def test_a_manifest_a_client_can_build_is_one_the_aggregator_reads_and_verifies(
    metrics: dict[str, float], client: str, num_samples: int, created: datetime
) -> None:
    manifest = sign_manifest(
        layout.UpdateManifest(
            client=client,
            round=1,
            base_round=0,
            base_sha256="2" * 64,
            num_samples=num_samples,
            metrics=fit_metrics(metrics),
            update_sha256="3" * 64,
            update_bytes=4096,
            dtype="float32",
            created_at=created,
        ),
        KEY,
    )
    data = manifest.to_json()

    parsed = layout.UpdateManifest.model_validate_json(data)
    assert len(data) <= MAX_MANIFEST_BYTES
    assert verify(parsed, KEY)


@FUZZ
@given(name=hostile_text, value=hostile_float)
def test_a_manifest_refuses_what_json_or_the_caps_cannot_hold(name: str, value: float) -> None:
    fields = {
        "client": "a",
        "round": 1,
        "base_round": 0,
        "base_sha256": "2" * 64,
        "num_samples": 10,
        "metrics": {name: value},
        "update_sha256": "3" * 64,
        "update_bytes": 4096,
        "dtype": "float32",
    }
    fits = math.isfinite(value) and 0 < len(name) <= MAX_METRIC_NAME_CHARS

    try:
        manifest = layout.UpdateManifest.model_validate(fields)
    except ValidationError:
        assert not fits
        return
    assert fits
    assert read_back(manifest) == manifest


def test_a_round_record_an_older_fedkube_wrote_with_null_metrics_reads() -> None:
    old = {
        "round": 2,
        "metrics": {"loss": None, "accuracy": 0.5},
        "client_metrics": {"a": {"train_loss": None}},
        "model_key": "rounds/000002/global.safetensors",
        "model_sha256": "0" * 64,
        "started_at": "2026-01-01T00:00:00Z",
    }

    record = layout.RoundRecord.model_validate_json(json.dumps(old))

    assert record.metrics == {"accuracy": 0.5}
    assert record.client_metrics == {"a": {}}
    assert record.dropped_metrics == {"loss": "null", "a/train_loss": "null"}


def test_non_finite_metrics_are_named_in_dropped_metrics() -> None:
    record = layout.RoundRecord(
        round=1,
        metrics={"loss": math.nan, "accuracy": 0.1, "grad": -math.inf},
        model_key="k",
        model_sha256="0" * 64,
        started_at=WHEN,
    )

    assert record.metrics == {"accuracy": 0.1}
    assert record.dropped_metrics == {"loss": "nan", "grad": "-inf"}
    assert json.loads(record.to_json())["metrics"] == {"accuracy": 0.1}


@pytest.mark.parametrize(
    ("metrics", "kept"),
    [
        ({"loss": math.nan, "acc": 1.0}, {"acc": 1.0}),
        ({"x" * (MAX_METRIC_NAME_CHARS + 1): 1.0, "": 2.0, "ok": 3.0}, {"ok": 3.0}),
        ({f"m{i:03d}": float(i) for i in range(MAX_METRICS + 5)}, MAX_METRICS),
    ],
    ids=["non-finite", "bad names", "too many"],
)
def test_fit_metrics_keeps_what_a_manifest_can_carry(
    metrics: dict[str, float], kept: dict[str, float] | int
) -> None:
    fitted = fit_metrics(metrics)

    if isinstance(kept, int):
        assert len(fitted) == kept
        assert list(fitted) == sorted(metrics)[:kept]
    else:
        assert fitted == kept


def test_records_without_dropped_metrics_keep_the_json_older_readers_know() -> None:
    record = layout.RoundRecord(
        round=1, metrics={"loss": 0.25}, model_key="k", model_sha256="0" * 64, started_at=WHEN
    )
    final = layout.FinalRecord(rounds=1, model_sha256="0" * 64, metrics={"loss": 0.25})

    assert "dropped_metrics" not in json.loads(record.to_json())
    assert "dropped_metrics" not in json.loads(final.to_json())


@pytest.mark.parametrize(
    ("spelled", "dropped"),
    [
        ("NaN", "nan"),
        ("1e999", "inf"),
        ("-Infinity", "-inf"),
        ('"nan"', "nan"),
        ("1" + "0" * 400, "inf"),
        ("null", "null"),
    ],
)
def test_a_record_file_holding_a_metric_json_cannot_carry_reads_with_it_dropped(
    spelled: str, dropped: str
) -> None:
    text = (
        '{"round": 1, "metrics": {"loss": ' + spelled + ', "accuracy": 0.5}, '
        '"model_key": "k", "model_sha256": "s", "started_at": "2026-01-01T00:00:00Z"}'
    )

    record = layout.RoundRecord.model_validate_json(text)

    assert record.metrics == {"accuracy": 0.5}
    assert record.dropped_metrics == {"loss": dropped}
    assert read_back(record) == record
