"""Update validation: a good update passes, and every way to be bad has its reason code."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from fedcore.errors import UpdateRejected
from fedcore.layout import UpdateManifest
from fedcore.records import MAX_MANIFEST_BYTES, MAX_METRIC_NAME_CHARS, MAX_METRICS
from fedcore.signing import SigningKey, sign_manifest
from fedcore.strategies.base import MAX_INT_ACCUMULATOR
from fedcore.validation import REJECT_REASONS, VALIDATION_REASONS, validate_update
from fedcore.weights import (
    InMemoryWeights,
    Tensors,
    save_weights,
    sha256_file,
    template_of,
    update_metadata,
)

CLIENT = "hospital-a"
ROUND = 5
BASE_SHA = "ab" * 32
KEY = SigningKey(b"k" * 64)
OTHER_KEY = SigningKey(b"o" * 64)
MAX_BYTES = 1 << 20


def model() -> Tensors:
    return {
        "fc.weight": torch.zeros(4, 3),
        "fc.bias": torch.zeros(4),
        "bn.num_batches_tracked": torch.tensor(0),
        "mask": torch.tensor([True, False]),
    }


def good_delta() -> Tensors:
    return {
        "fc.weight": torch.full((4, 3), 0.5),
        "fc.bias": torch.ones(4),
        "bn.num_batches_tracked": torch.tensor(3),
        "mask": torch.tensor([False, False]),
    }


@dataclass
class Case:
    """One update as it lands in the store: file and manifest, built then spoiled by a test."""

    tensors: Tensors = field(default_factory=good_delta)
    metadata: dict[str, str | int] = field(
        default_factory=lambda: dict(update_metadata(ROUND, CLIENT))
    )
    manifest: dict[str, Any] = field(default_factory=dict)
    sign_key: SigningKey | None = KEY
    after_signing: Callable[[Path, UpdateManifest], UpdateManifest | bytes] | None = None
    check: dict[str, Any] = field(default_factory=dict)
    raw_file: bytes | None = None

    def run(self, tmp_path: Path) -> UpdateManifest:
        path = tmp_path / f"{CLIENT}.safetensors"
        if self.raw_file is not None:
            path.write_bytes(self.raw_file)
        else:
            save_weights(path, self.tensors, self.metadata)
        fields: dict[str, Any] = {
            "client": CLIENT,
            "round": ROUND,
            "base_round": ROUND - 1,
            "base_sha256": BASE_SHA,
            "num_samples": 64,
            "metrics": {"loss": 0.5},
            "update_sha256": sha256_file(path),
            "update_bytes": path.stat().st_size,
            "dtype": "float32",
        }
        fields.update(self.manifest)
        manifest = UpdateManifest(**fields)
        if self.sign_key is not None:
            manifest = sign_manifest(manifest, self.sign_key)
        sent: UpdateManifest | bytes = manifest
        if self.after_signing is not None:
            sent = self.after_signing(path, manifest)
        kwargs: dict[str, Any] = {
            "client": CLIENT,
            "expected_round": ROUND,
            "base_sha256": BASE_SHA,
            "template": template_of(model()),
            "max_bytes": MAX_BYTES,
            "key": KEY,
            "base": InMemoryWeights(model()),
        }
        kwargs.update(self.check)
        return validate_update(sent, path, **kwargs)


def flip_last_byte(path: Path, manifest: UpdateManifest) -> UpdateManifest:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    return manifest


def append_bytes(path: Path, manifest: UpdateManifest) -> UpdateManifest:
    path.write_bytes(path.read_bytes() + b"  ")
    return manifest


def edit_json(**changes: Any) -> Callable[[Path, UpdateManifest], bytes]:
    """The signed manifest as JSON with fields replaced (no model would hold them)."""

    def edit(path: Path, manifest: UpdateManifest) -> bytes:
        fields = json.loads(manifest.to_json())
        fields.update(changes)
        return json.dumps(fields).encode()

    return edit


def base_with(**changes: torch.Tensor) -> InMemoryWeights:
    tensors = model()
    tensors.update(changes)
    return InMemoryWeights(tensors)


def with_delta(**changes: torch.Tensor) -> Tensors:
    tensors = good_delta()
    tensors.update(changes)
    return tensors


def without(name: str) -> Tensors:
    tensors = good_delta()
    del tensors[name]
    return tensors


REJECTIONS = [
    pytest.param(
        Case(after_signing=lambda p, m: b'{"client": "hospital-a", "round": '),
        "bad-manifest",
        "not a valid UpdateManifest",
        id="the manifest is not valid JSON",
    ),
    pytest.param(
        Case(manifest={"client": "hospital-b"}),
        "bad-manifest",
        "names client 'hospital-b'",
        id="the manifest names another client than its slot",
    ),
    pytest.param(
        Case(manifest={"num_samples": 0}),
        "bad-manifest",
        "num_samples is 0",
        id="the update was trained on no samples",
    ),
    pytest.param(
        Case(manifest={"num_samples": 10**15}),
        "bad-manifest",
        "num_samples is",
        id="the sample count is absurd",
    ),
    pytest.param(
        Case(manifest={"dtype": "int16"}),
        "bad-manifest",
        "not a wire format",
        id="the manifest's wire dtype is not a float dtype nor int8",
    ),
    pytest.param(
        Case(sign_key=OTHER_KEY),
        "bad-signature",
        "does not verify",
        id="signed with another client's key",
    ),
    pytest.param(Case(sign_key=None), "bad-signature", "does not verify", id="not signed at all"),
    pytest.param(
        Case(check={"key": None}),
        "bad-signature",
        "no signing key",
        id="the aggregator has no key for the client",
    ),
    pytest.param(
        Case(after_signing=lambda p, m: m.model_copy(update={"num_samples": 10_000})),
        "bad-signature",
        "does not verify",
        id="a field was changed after signing",
    ),
    pytest.param(
        Case(after_signing=flip_last_byte),
        "bad-signature",
        "sha256 differs",
        id="the file's bytes were changed after signing",
    ),
    pytest.param(
        Case(after_signing=append_bytes),
        "bad-signature",
        "bytes but the signed manifest says",
        id="the file's size differs from the signed size",
    ),
    pytest.param(
        Case(manifest={"round": ROUND - 1, "base_round": ROUND - 2}),
        "wrong-base-round",
        "for round 4",
        id="the update is for an earlier round",
    ),
    pytest.param(
        Case(manifest={"base_round": ROUND - 2}),
        "wrong-base-round",
        "trained from round 3",
        id="the update was trained from an older global model",
    ),
    pytest.param(
        Case(manifest={"base_sha256": "cd" * 32}),
        "wrong-base-model",
        "sha256 cdcdcdcdcdcd",
        id="the update was trained from another model",
    ),
    pytest.param(
        Case(check={"max_bytes": 100}),
        "too-large",
        "more than the 100 allowed",
        id="the file is larger than allowed",
    ),
    pytest.param(
        Case(raw_file=b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}"),
        "malformed-update",
        "not a readable safetensors",
        id="the file is not safetensors",
    ),
    pytest.param(
        Case(metadata={"kind": "global", "round": ROUND, "client": CLIENT}),
        "malformed-update",
        "header metadata",
        id="the file is not an update",
    ),
    pytest.param(
        Case(metadata=dict(update_metadata(ROUND + 1, CLIENT))),
        "malformed-update",
        "header metadata",
        id="the file's header names another round",
    ),
    pytest.param(
        Case(tensors=without("fc.bias")),
        "missing-tensor",
        "'fc.bias'",
        id="a model tensor is missing",
    ),
    pytest.param(
        Case(tensors=with_delta(extra=torch.zeros(1))),
        "unknown-tensor",
        "'extra'",
        id="a tensor the model lacks is present",
    ),
    pytest.param(
        Case(tensors=with_delta(**{"fc.weight": torch.zeros(3, 4)})),
        "shape-mismatch",
        r"'fc.weight' has shape \[3, 4\]",
        id="a tensor has another shape",
    ),
    pytest.param(
        Case(tensors=with_delta(**{"bn.num_batches_tracked": torch.tensor(3, dtype=torch.int32)})),
        "dtype-mismatch",
        "'bn.num_batches_tracked' has dtype int32",
        id="an integer tensor has another dtype",
    ),
    pytest.param(
        Case(tensors=with_delta(**{"fc.bias": torch.ones(4, dtype=torch.bfloat16)})),
        "dtype-mismatch",
        "'fc.bias' has dtype bfloat16; allowed: float32$",
        id="a float tensor is narrower while the job does not allow it",
    ),
    pytest.param(
        Case(
            tensors=with_delta(**{"fc.bias": torch.ones(4, dtype=torch.float16)}),
            manifest={"dtype": "bfloat16"},
            check={"allow_low_precision": True},
        ),
        "dtype-mismatch",
        "float16; allowed: float32 or bfloat16",
        id="a float tensor is in another dtype than the manifest declares",
    ),
    pytest.param(
        Case(
            tensors=with_delta(**{"fc.bias": torch.ones(4, dtype=torch.float64)}),
            manifest={"dtype": "float64"},
            check={"allow_low_precision": True},
        ),
        "dtype-mismatch",
        "has dtype float64",
        id="a float tensor is wider than the model's",
    ),
    pytest.param(
        Case(tensors=with_delta(**{"fc.bias": torch.tensor([1.0, float("nan"), 0.0, 0.0])})),
        "non-finite",
        "'fc.bias' holds 1 NaN or infinite",
        id="a tensor holds NaN",
    ),
    pytest.param(
        Case(tensors=with_delta(**{"fc.weight": torch.full((4, 3), float("-inf"))})),
        "non-finite",
        "holds 12 NaN or infinite values of 12",
        id="a tensor holds infinities",
    ),
    pytest.param(
        Case(tensors=with_delta(mask=torch.tensor([False, True]))),
        "constant-changed",
        "bool tensor 'mask'",
        id="a bool constant was changed",
    ),
    pytest.param(
        Case(after_signing=lambda p, m: m.to_json().replace(b'"loss": 0.5', b'"loss": NaN')),
        "bad-manifest",
        "metrics.loss",
        id="a metric is NaN",
    ),
    pytest.param(
        Case(after_signing=lambda p, m: m.to_json().replace(b'"loss": 0.5', b'"loss": 1e999')),
        "bad-manifest",
        "metrics.loss",
        id="a metric is 1e999, an infinity once parsed",
    ),
    pytest.param(
        Case(after_signing=lambda p, m: m.to_json().replace(b'"loss": 0.5', b'"loss": Infinity')),
        "bad-manifest",
        "metrics.loss",
        id="a metric is Infinity",
    ),
    pytest.param(
        Case(after_signing=lambda p, m: m.to_json() + b" " * MAX_MANIFEST_BYTES),
        "bad-manifest",
        f"more than the {MAX_MANIFEST_BYTES} allowed",
        id="the manifest is larger than the cap",
    ),
    pytest.param(
        Case(after_signing=edit_json(metrics={f"m{i}": 1.0 for i in range(MAX_METRICS + 1)})),
        "bad-manifest",
        f"at most {MAX_METRICS} items",
        id="the manifest holds too many metrics",
    ),
    pytest.param(
        Case(after_signing=edit_json(metrics={"x" * (MAX_METRIC_NAME_CHARS + 1): 1.0})),
        "bad-manifest",
        f"at most {MAX_METRIC_NAME_CHARS} characters",
        id="a metric name is too long",
    ),
    pytest.param(
        Case(
            after_signing=lambda p, m: m.to_json().replace(
                b'"num_samples": 64', b'"num_samples": ' + b"9" * 5000
            )
        ),
        "bad-manifest",
        "not a valid UpdateManifest",
        id="an integer is thousands of digits long",
    ),
    pytest.param(
        Case(after_signing=edit_json(update_bytes=2**64)),
        "bad-manifest",
        "update_bytes: Input should be less than or equal to 9223372036854775807",
        id="an integer is beyond int64",
    ),
    pytest.param(
        Case(after_signing=lambda p, m: m.model_copy(update={"signature": "\ud800" * 64})),
        "bad-signature",
        "does not verify",
        id="the signature is not hex",
    ),
    pytest.param(
        Case(
            tensors=with_delta(**{"bn.num_batches_tracked": torch.tensor(2**63 - 8)}),
            manifest={"num_samples": 1},
            check={"base": base_with(**{"bn.num_batches_tracked": torch.tensor(10)})},
        ),
        "out-of-range",
        r"'bn.num_batches_tracked': base \+ delta leaves int64 .* in 1 of 1 elements",
        id="an int64 delta overflows its base",
    ),
    pytest.param(
        Case(
            tensors=with_delta(**{"bn.num_batches_tracked": torch.tensor(-5)}),
            check={"base": base_with(**{"bn.num_batches_tracked": torch.tensor(-(2**63) + 4)})},
        ),
        "out-of-range",
        "leaves int64",
        id="a negative int64 delta underflows its base",
    ),
    pytest.param(
        Case(
            tensors=with_delta(**{"bn.num_batches_tracked": torch.tensor(MAX_INT_ACCUMULATOR)}),
        ),
        "out-of-range",
        "weighted by num_samples 64 exceeds",
        id="an integer delta weighted by its samples exceeds the exact accumulator",
    ),
]


@pytest.mark.parametrize(("case", "reason", "detail"), REJECTIONS)
def test_bad_update_is_rejected_with_its_reason(
    case: Case, reason: str, detail: str, tmp_path: Path
) -> None:
    with pytest.raises(UpdateRejected) as caught:
        case.run(tmp_path)

    assert caught.value.client == CLIENT
    assert caught.value.reason == reason
    assert caught.value.reason in REJECT_REASONS
    assert caught.value.detail
    assert re.search(detail, caught.value.detail), caught.value.detail


def test_every_reason_code_has_a_rejection_case() -> None:
    exercised = {param.values[1] for param in REJECTIONS}

    assert exercised == set(VALIDATION_REASONS)
    assert set(VALIDATION_REASONS) < set(REJECT_REASONS)


def test_good_update_passes_and_returns_its_manifest(tmp_path: Path) -> None:
    manifest = Case().run(tmp_path)

    assert manifest.client == CLIENT
    assert manifest.num_samples == 64


def test_good_manifest_read_from_store_bytes_passes(tmp_path: Path) -> None:
    manifest = Case(after_signing=lambda p, m: m.to_json()).run(tmp_path)

    assert manifest.round == ROUND


def test_narrower_float_wire_dtype_passes_when_the_job_allows_it(tmp_path: Path) -> None:
    tensors = {
        name: t.to(torch.bfloat16) if t.dtype == torch.float32 else t
        for name, t in good_delta().items()
    }
    case = Case(
        tensors=tensors, manifest={"dtype": "bfloat16"}, check={"allow_low_precision": True}
    )

    assert case.run(tmp_path).dtype == "bfloat16"


def test_finite_values_whose_sum_overflows_are_accepted(tmp_path: Path) -> None:
    huge = torch.finfo(torch.float32).max
    case = Case(tensors=with_delta(**{"fc.bias": torch.full((4,), huge)}))

    assert case.run(tmp_path).client == CLIENT


def test_bytes_changed_after_signing_outrank_what_they_contain(tmp_path: Path) -> None:
    def poison(path: Path, manifest: UpdateManifest) -> UpdateManifest:
        nan_bias = torch.full((4,), float("nan"))
        save_weights(path, with_delta(**{"fc.bias": nan_bias}), update_metadata(ROUND, CLIENT))
        return manifest

    with pytest.raises(UpdateRejected) as caught:
        Case(after_signing=poison).run(tmp_path)

    assert caught.value.reason == "bad-signature"


def test_every_reason_code_is_in_the_docs_tables() -> None:
    import fedcore.validation

    design = (Path(__file__).parents[2] / "docs" / "design.md").read_text()
    docstring = fedcore.validation.__doc__ or ""

    for reason in REJECT_REASONS:
        assert f"| `{reason}` |" in design, reason
        assert re.search(rf"^{re.escape(reason)}\s", docstring, re.MULTILINE), reason
