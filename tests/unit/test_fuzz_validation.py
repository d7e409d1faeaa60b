"""Fuzzing ``validate_update``: valid updates mutated field by field and byte by byte.

Whatever the mutation (a manifest field set to any JSON value, bytes of the manifest or the
weights file edited, a tensor replaced by one of another dtype, shape or hostile values,
then signed again with the client's key or not), validation either accepts the update or
raises ``UpdateRejected`` with a reason code from ``VALIDATION_REASONS``: no other exception
escapes. An accepted update is safe to aggregate: folding and finalizing it raises nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch
from hypothesis import event, given
from hypothesis import strategies as st

from fedcore.errors import UpdateRejected
from fedcore.signing import SigningKey, signature_of
from fedcore.strategies import FedAvg
from fedcore.validation import VALIDATION_REASONS, validate_update
from fedcore.weights import (
    InMemoryWeights,
    Tensors,
    open_weights,
    save_weights,
    sha256_file,
    template_of,
    update_metadata,
)
from tests.fixtures.fuzz import (
    MANIFEST_FIELDS,
    ByteEdit,
    byte_edits,
    edit_bytes,
    fuzz_settings,
    hostile_float,
    json_value,
)

CLIENT = "hospital-a"
ROUND = 3
BASE_SHA = "ab" * 32
KEY = SigningKey(b"k" * 64)
MAX_BYTES = 1 << 16
FUZZ = fuzz_settings(max_examples=120)


def base_model() -> Tensors:
    """Integer tensors close to their dtype's limits, so small deltas can overflow."""
    return {
        "fc.weight": torch.zeros(4, 3),
        "fc.bias": torch.full((4,), 3e38),
        "bn.num_batches_tracked": torch.tensor(2**63 - 1000),
        "steps": torch.tensor([2**31 - 5, -(2**31) + 5], dtype=torch.int32),
        "code": torch.tensor([250, 3], dtype=torch.uint8),
        "mask": torch.tensor([True, False]),
    }


def honest_delta() -> Tensors:
    return {
        "fc.weight": torch.full((4, 3), 0.5),
        "fc.bias": torch.ones(4),
        "bn.num_batches_tracked": torch.tensor(3),
        "steps": torch.tensor([1, -1], dtype=torch.int32),
        "code": torch.tensor([2, 0], dtype=torch.uint8),
        "mask": torch.tensor([False, False]),
    }


TEMPLATE = template_of(base_model())


def manifest_fields(path: Path) -> dict[str, Any]:
    return {
        "client": CLIENT,
        "round": ROUND,
        "base_round": ROUND - 1,
        "base_sha256": BASE_SHA,
        "num_samples": 64,
        "metrics": {"loss": 0.5},
        "update_sha256": sha256_file(path),
        "update_bytes": path.stat().st_size,
        "dtype": "float32",
        "created_at": "2026-01-01T00:00:00Z",
    }


def signed(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with the client's signature, when they can be signed at all."""
    try:
        return {**fields, "signature": signature_of(fields, KEY)}
    except (ValueError, TypeError):  # NaN, or values JSON cannot hold: leave it unsigned
        return fields


def check(manifest: bytes, path: Path) -> str:
    """Validate; on acceptance, fold and finalize it. The reason code, or 'accepted'."""
    base = InMemoryWeights(base_model())
    rejection: UpdateRejected | None = None
    try:
        accepted = validate_update(
            manifest,
            path,
            client=CLIENT,
            expected_round=ROUND,
            base_sha256=BASE_SHA,
            template=TEMPLATE,
            max_bytes=MAX_BYTES,
            key=KEY,
            base=base,
        )
    except UpdateRejected as e:
        rejection = e
    if rejection is not None:
        assert rejection.reason in VALIDATION_REASONS, rejection
        assert rejection.client == CLIENT
        assert rejection.detail
        return rejection.reason
    strategy = FedAvg()
    strategy.begin_round(TEMPLATE)
    with open_weights(path) as update:
        strategy.fold(update, accepted.num_samples)
    strategy.finalize(base)
    return "accepted"


def write_update(folder: Path, tensors: Tensors) -> Path:
    path = folder / "update.safetensors"
    save_weights(path, tensors, update_metadata(ROUND, CLIENT))
    return path


def test_the_unmutated_update_is_accepted_and_folds() -> None:
    with TemporaryDirectory() as tmp:
        path = write_update(Path(tmp), honest_delta())

        assert check(json.dumps(signed(manifest_fields(path))).encode(), path) == "accepted"


@FUZZ
@given(
    field=st.sampled_from(MANIFEST_FIELDS),
    value=json_value,
    delete=st.booleans(),
    resign=st.booleans(),
)
def test_a_manifest_field_set_to_any_json_value_is_accepted_or_rejected_with_a_reason(
    field: str, value: Any, delete: bool, resign: bool
) -> None:
    with TemporaryDirectory() as tmp:
        path = write_update(Path(tmp), honest_delta())
        fields = manifest_fields(path)
        if delete:
            fields.pop(field, None)
        else:
            fields[field] = value
        if resign:
            fields = signed(fields)

        outcome = check(json.dumps(fields).encode(), path)

    event(outcome)
    assert outcome in {*VALIDATION_REASONS, "accepted"}


@FUZZ
@given(edits=byte_edits)
def test_edited_manifest_bytes_are_accepted_or_rejected_with_a_reason(
    edits: list[ByteEdit],
) -> None:
    with TemporaryDirectory() as tmp:
        path = write_update(Path(tmp), honest_delta())
        manifest = json.dumps(signed(manifest_fields(path))).encode()

        outcome = check(edit_bytes(manifest, edits), path)

    event(outcome)
    assert outcome in {*VALIDATION_REASONS, "accepted"}


@FUZZ
@given(edits=byte_edits, resign=st.booleans())
def test_edited_weights_bytes_are_rejected_with_a_reason_unless_harmless(
    edits: list[ByteEdit], resign: bool
) -> None:
    with TemporaryDirectory() as tmp:
        path = write_update(Path(tmp), honest_delta())
        fields = manifest_fields(path)
        original = path.read_bytes()
        path.write_bytes(edit_bytes(original, edits))
        changed = path.read_bytes() != original
        if resign:  # the client itself sends the edited bytes
            fields.update(update_sha256=sha256_file(path), update_bytes=path.stat().st_size)

        outcome = check(json.dumps(signed(fields)).encode(), path)

    if changed and not resign:
        assert outcome == "bad-signature"
    event(outcome)
    assert outcome in {*VALIDATION_REASONS, "accepted"}


DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
]


@st.composite
def hostile_tensors(draw: st.DrawFn) -> tuple[str, torch.Tensor]:
    """A model tensor's name and a replacement: maybe another dtype or shape, any values."""
    name = draw(st.sampled_from(sorted(TEMPLATE)))
    spec = TEMPLATE[name]
    # Mostly the model's own dtype and shape: hostile values are the interesting part.
    dtype = draw(st.sampled_from([spec.dtype] * 12 + DTYPES))
    shape = draw(st.sampled_from([tuple(spec.shape)] * 12 + [(), (0,), (2, 2)]))
    numel = math.prod(shape)
    if dtype.is_floating_point:
        values: list[Any] = draw(st.lists(hostile_float, min_size=numel, max_size=numel))
        return name, torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)
    if dtype == torch.bool:
        flags = draw(st.lists(st.booleans(), min_size=numel, max_size=numel))
        return name, torch.tensor(flags, dtype=torch.bool).reshape(shape)
    info = torch.iinfo(dtype)
    ints = draw(
        st.lists(
            st.integers(info.min, info.max) | st.sampled_from([info.min, info.max, 0, 1, -1]),
            min_size=numel,
            max_size=numel,
        )
    )
    ints = [min(max(v, info.min), info.max) for v in ints]
    return name, torch.tensor(ints, dtype=dtype).reshape(shape)


@FUZZ
@given(replacement=hostile_tensors(), num_samples=st.sampled_from([1, 64, 10**12]))
def test_a_signed_update_with_a_hostile_tensor_is_rejected_or_safe_to_aggregate(
    replacement: tuple[str, torch.Tensor], num_samples: int
) -> None:
    name, tensor = replacement
    with TemporaryDirectory() as tmp:
        path = write_update(Path(tmp), {**honest_delta(), name: tensor})
        fields = {**manifest_fields(path), "num_samples": num_samples}

        outcome = check(json.dumps(signed(fields)).encode(), path)

    event(outcome)
    assert outcome in {*VALIDATION_REASONS, "accepted"}
