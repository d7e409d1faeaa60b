"""The gate every client update passes before it may touch the aggregate.

The store holds untrusted bytes: anyone able to write a client's update slot could try to
poison the global model or crash the aggregator. ``validate_update`` checks, cheapest first
and before trusting any field, that an update is signed by its client's key, trained from
this round's global model, and has exactly the model's tensors, shapes and (allowed) dtypes
with finite values and a sane size. A failure raises ``UpdateRejected`` whose ``reason`` is
one of ``REJECT_REASONS``: the aggregator records it in ``round.json``
(``RoundRecord.rejected``) and goes on without the update; the operator turns it into a
Kubernetes Event.

``reason`` codes, roughly in the order they are checked (cheapest first; bytes that do not
match the signed sha256 outrank any problem found in them). The last five are raised by the
aggregator itself, around this gate (``fedcore.aggregator``); ``REJECT_REASONS`` lists all:

====================  =========================================================================
bad-manifest          the manifest is larger than ``MAX_MANIFEST_BYTES`` (checked from the
                      store's metadata before it is read), not valid JSON for
                      ``UpdateManifest`` (a NaN or infinite number anywhere, an integer outside
                      int64, more than ``MAX_METRICS`` metrics or a name longer than
                      ``MAX_METRIC_NAME_CHARS``), names another client, or holds an impossible
                      value (``num_samples``, ``dtype``, sizes)
bad-signature         no key for the client, the HMAC does not verify, or the file's size or
                      sha256 differs from the signed manifest's (the bytes changed after signing)
wrong-base-round      the update is for another round, or trained from another round's model
wrong-base-model      trained from a model whose sha256 is not this round's global
too-large             the file (its size in the store, checked before any download, or its
                      declared size) exceeds ``max_bytes``
malformed-update      the file is not safetensors, or its header metadata disagrees with the
                      manifest (``kind``/``round``/``client``), or it is missing from the store
missing-tensor        a model tensor is absent
unknown-tensor        a tensor the model does not have is present
shape-mismatch        a tensor has another shape than the model's
dtype-mismatch        a tensor has a dtype the model and job do not allow
non-finite            a float tensor holds NaN or +-inf (an int8 update: a scale does)
constant-changed      a bool tensor (a constant of the model, such as a mask) was changed
out-of-range          an int8 update's scale is <= 0 or too large, or it holds -128 (see
                      ``fedcore.quantization``); an integer tensor's base + delta leaves its
                      dtype's range, or its weighted delta (``num_samples x delta``) would
                      leave the exact int64 accumulator's range (``MAX_INT_ACCUMULATOR``),
                      alone or with the updates folded before it
not-selected          (aggregator) the client was not selected for the round, or is not a
                      client of the job
non-finite-aggregate  (aggregator) the round's new global model (or server state) would hold
                      NaN or inf; updates that alone would make it non-finite are rejected and
                      the round is recomputed without them (``fedcore.guard``)
internal-error        (aggregator) handling the update raised an unexpected exception (its
                      message is the detail); the update is left out and the round goes on
changed-during-round  (aggregator) read again to fold it with its capped weight
                      (``strategy.maxWeightShare``), the update declared another
                      ``num_samples`` than when the round closed
====================  =========================================================================

Values are checked one tensor at a time (the file is never loaded whole), so validation's
memory is one tensor. A float tensor may travel in a lower-precision float dtype than the
model's (``float16``/``bfloat16`` for a ``float32`` model) only when the job allows it and the
manifest's ``dtype`` names that dtype; every other tensor keeps the model's dtype. An update
whose manifest ``dtype`` is ``int8`` (allowed likewise) must have exactly the structure
``fedcore.quantization`` defines for the model: an int8 tensor and its float32 per-slice
scales for every float tensor.

A sharded update (its manifest lists ``shards``, ``fedcore.sharded_update``) is held to the
same rules: after the signature and rounds, every shard's size and sha256 must be its signed
entry's, the shards must tile every tensor exactly once, and the assembled file then passes
the same content checks (int8 is not offered for sharded updates).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Literal, get_args

import torch
from pydantic import ValidationError

from fedcore.errors import FedcoreError, UpdateRejected
from fedcore.layout import UpdateManifest
from fedcore.quantization import INT8_WIRE, scales_name
from fedcore.quantization import check_structure as check_int8_structure
from fedcore.quantization import check_values as check_int8_values
from fedcore.records import MAX_MANIFEST_BYTES
from fedcore.sharded_update import assemble, shards_dir
from fedcore.signing import SigningKey, verify
from fedcore.strategies.base import MAX_INT_ACCUMULATOR, MAX_NUM_SAMPLES, arithmetic_threads
from fedcore.weights import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    INT_DTYPES,
    Scratch,
    Template,
    TensorSource,
    TensorSpec,
    dtype_name,
    open_weights,
    sha256_file,
)

ValidationReason = Literal[
    "bad-manifest",
    "bad-signature",
    "wrong-base-round",
    "wrong-base-model",
    "too-large",
    "malformed-update",
    "missing-tensor",
    "unknown-tensor",
    "shape-mismatch",
    "dtype-mismatch",
    "non-finite",
    "constant-changed",
    "out-of-range",
]
RoundReason = Literal[
    "not-selected", "non-finite-aggregate", "internal-error", "changed-during-round"
]
RejectReason = ValidationReason | RoundReason
VALIDATION_REASONS: Final[tuple[str, ...]] = get_args(ValidationReason)
"""Every ``UpdateRejected.reason`` ``validate_update`` raises."""
REJECT_REASONS: Final[tuple[str, ...]] = VALIDATION_REASONS + get_args(RoundReason)
"""Every reason an update is rejected for, here or by the aggregator (stable: Events and
records use them)."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LISTED = 5
"""Names listed in a detail message before '...' (a detail is one readable line)."""


class _Rejector:
    """Raises UpdateRejected for one client with a reason code from the closed list."""

    def __init__(self, client: str) -> None:
        self.client = client

    def __call__(self, reason: ValidationReason, detail: str) -> UpdateRejected:
        return UpdateRejected(self.client, reason, detail)


def _parse_manifest(
    raw: UpdateManifest | bytes | str | Mapping[str, Any], reject: _Rejector
) -> UpdateManifest:
    if isinstance(raw, UpdateManifest):
        return raw
    if isinstance(raw, bytes | str) and len(raw) > MAX_MANIFEST_BYTES:
        raise reject(
            "bad-manifest",
            f"the manifest is {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} allowed",
        )
    try:
        if isinstance(raw, bytes | str):
            return UpdateManifest.model_validate_json(raw)
        return UpdateManifest.model_validate(dict(raw))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}"
            for err in e.errors()[:_LISTED]
        )
        raise reject(
            "bad-manifest", f"the manifest is not a valid UpdateManifest: {problems}"
        ) from e


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return shown + more


def _allowed_dtype(
    model: torch.dtype, wire: torch.dtype, low_precision: torch.dtype | None
) -> bool:
    if wire == model:
        return True
    return (
        low_precision is not None
        and model in FLOAT_DTYPES
        and wire == low_precision
        and wire.itemsize <= model.itemsize
    )


def validate_update(
    manifest: UpdateManifest | bytes | str | Mapping[str, Any],
    weights_path: str | os.PathLike[str],
    *,
    client: str,
    expected_round: int,
    base_sha256: str,
    template: Template,
    max_bytes: int,
    key: SigningKey | None,
    base: TensorSource,
    allow_low_precision: bool = False,
) -> UpdateManifest:
    """Check one update end to end; return its parsed manifest or raise ``UpdateRejected``.

    ``client`` is the update slot it was read from (``rounds/NNNNNN/updates/<client>.*``) and
    ``key`` that client's signing key (``None``: no key is known, a ``bad-signature``).
    ``template`` is the model's name -> (shape, dtype); ``base_sha256`` the sha256 of the
    round's base global model (round ``expected_round - 1``) and ``base`` that model itself:
    an integer delta must keep ``base + delta`` inside its dtype. ``allow_low_precision`` lets
    float tensors travel in the narrower float dtype named by the manifest's ``dtype``.
    """
    reject = _Rejector(client)
    m = _parse_manifest(manifest, reject)

    if m.client != client:
        raise reject(
            "bad-manifest",
            f"the manifest names client {m.client!r} but sits in client {client!r}'s update slot",
        )
    if key is None:
        raise reject("bad-signature", f"no signing key is known for client {client!r}")
    if not verify(m, key):
        raise reject(
            "bad-signature",
            "the manifest's HMAC-SHA256 signature does not verify with the client's key",
        )

    if m.round != expected_round:
        raise reject(
            "wrong-base-round",
            f"the update is for round {m.round}, but round {expected_round} is being aggregated",
        )
    if m.base_round != expected_round - 1:
        raise reject(
            "wrong-base-round",
            f"the update was trained from round {m.base_round}'s model, but round "
            f"{expected_round} starts from round {expected_round - 1}'s",
        )
    if m.base_sha256 != base_sha256:
        raise reject(
            "wrong-base-model",
            f"the update was trained from a model with sha256 {m.base_sha256[:12]}..., but "
            f"round {expected_round - 1}'s global model is {base_sha256[:12]}...",
        )

    if not 1 <= m.num_samples <= MAX_NUM_SAMPLES:
        raise reject(
            "bad-manifest",
            f"num_samples is {m.num_samples}; it must be between 1 and {MAX_NUM_SAMPLES}",
        )
    int8 = m.dtype == INT8_WIRE
    low_precision = DTYPE_NAMES.get(m.dtype)
    if not int8 and low_precision not in FLOAT_DTYPES:
        raise reject(
            "bad-manifest",
            f"dtype {m.dtype!r} is not a wire format; use one of "
            f"{sorted(dtype_name(d) for d in FLOAT_DTYPES)} or {INT8_WIRE!r}",
        )
    if int8 and not allow_low_precision:
        raise reject(
            "dtype-mismatch",
            f"the update is {INT8_WIRE}-quantised, but the job does not let client {client!r} "
            "upload narrower deltas (spec.strategy.updateDtype)",
        )
    if not _SHA256.match(m.update_sha256) or m.update_bytes < 0:
        raise reject(
            "bad-manifest", "update_sha256 must be 64 lowercase hex digits and update_bytes >= 0"
        )
    if m.update_bytes > max_bytes:
        raise reject(
            "too-large",
            f"the manifest declares {m.update_bytes} bytes, more than the {max_bytes} allowed",
        )

    path = Path(weights_path)
    if m.shards:  # digests of every shard, tiling, then the same content checks
        if int8:
            raise reject("dtype-mismatch", f"a sharded update cannot be {INT8_WIRE}-quantised")
        assemble(m, shards_dir(path), template, path, max_bytes=max_bytes)
        with arithmetic_threads():
            _check_contents(
                path, m, template, base, reject, low_precision if allow_low_precision else None
            )
        return m
    size = path.stat().st_size
    if size > max_bytes:
        raise reject(
            "too-large", f"the update file is {size} bytes, more than the {max_bytes} allowed"
        )
    if size != m.update_bytes:
        raise reject(
            "bad-signature",
            f"the update file is {size} bytes but the signed manifest says {m.update_bytes}; "
            "the bytes changed after signing or the upload is incomplete",
        )
    # Hashing and the content checks each take about as long as reading the file; hashlib
    # releases the GIL, so they overlap. A digest mismatch outranks any content problem: bytes
    # the client did not sign say nothing about the client.
    content_problem: UpdateRejected | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
        digest = pool.submit(sha256_file, path)
        try:
            with arithmetic_threads():
                _check_contents(
                    path,
                    m,
                    template,
                    base,
                    reject,
                    low_precision if allow_low_precision else None,
                    int8=int8,
                )
        except UpdateRejected as e:
            content_problem = e
        actual_sha256 = digest.result()
    if actual_sha256 != m.update_sha256:
        raise reject(
            "bad-signature",
            "the update file's sha256 differs from the signed manifest's update_sha256; "
            "the bytes changed after signing",
        )
    if content_problem is not None:
        raise content_problem
    return m


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite, at the cost of one sum in the common case.

    A NaN or an infinity anywhere makes the sum NaN or infinite, so a finite sum proves every
    element finite without a per-element mask; only a non-finite sum (a bad value, or finite
    values whose sum overflows) needs the exact element-wise check.
    """
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def _int_range_problem(
    base: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype, num_samples: int
) -> str | None:
    """Why integer ``delta`` cannot be folded onto ``base`` (None when it can).

    ``base + delta`` must fit ``dtype``, checked without computing the sum (which could wrap
    in int64): against ``max - base`` where base >= 0 and ``min - base`` where base < 0,
    neither of which can overflow. And ``num_samples x |delta|`` must stay within
    ``MAX_INT_ACCUMULATOR`` so the exact int64 sum cannot wrap. Together they make the
    aggregate fit: a weighted mean of deltas lies between the smallest and largest of them.
    """
    info = torch.iinfo(dtype)
    b, d = base.to(torch.int64), delta.to(torch.int64)
    above = d > info.max - b.clamp(min=0)
    below = d < info.min - b.clamp(max=0)
    outside = int((above | below).sum())
    if outside:
        return (
            f"base + delta leaves {dtype_name(dtype)} [{info.min}, {info.max}] in {outside} of "
            f"{d.numel()} elements"
        )
    if d.numel():
        largest = max(int(d.max()), -int(d.min()))
        if num_samples * largest > MAX_INT_ACCUMULATOR:
            return (
                f"its largest delta {largest} weighted by num_samples {num_samples} exceeds "
                f"{MAX_INT_ACCUMULATOR}, beyond what the aggregate can sum exactly"
            )
    return None


def _check_contents(
    path: Path,
    m: UpdateManifest,
    template: Template,
    base: TensorSource,
    reject: _Rejector,
    low_precision: torch.dtype | None,
    *,
    int8: bool = False,
) -> None:
    try:
        reader = open_weights(path)
    except FedcoreError as e:
        raise reject("malformed-update", str(e)) from e
    with reader:
        meta = reader.metadata
        expected = {"kind": "update", "round": str(m.round), "client": m.client}
        wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            raise reject(
                "malformed-update",
                f"the file's header metadata {wrong} disagrees with the manifest's {expected}",
            )

        wire = reader.template()
        if int8:  # fedcore.quantization: the structure follows from the model alone
            mismatch = check_int8_structure(template, wire)
            if mismatch is not None:
                raise reject(*mismatch)
        else:
            missing = sorted(set(template) - set(wire))
            if missing:
                raise reject("missing-tensor", f"the update lacks model tensors {_names(missing)}")
            unknown = sorted(set(wire) - set(template))
            if unknown:
                raise reject(
                    "unknown-tensor", f"the update has tensors the model lacks: {_names(unknown)}"
                )

            for name in sorted(template):
                want: TensorSpec = template[name]
                got = wire[name]
                if tuple(got.shape) != tuple(want.shape):
                    raise reject(
                        "shape-mismatch",
                        f"tensor {name!r} has shape {list(got.shape)}, "
                        f"the model's is {list(want.shape)}",
                    )
                if not _allowed_dtype(want.dtype, got.dtype, low_precision):
                    allowed = dtype_name(want.dtype)
                    if low_precision is not None and want.dtype in FLOAT_DTYPES:
                        allowed += f" or {dtype_name(low_precision)}"
                    raise reject(
                        "dtype-mismatch",
                        f"tensor {name!r} has dtype {dtype_name(got.dtype)}; allowed: {allowed}",
                    )

        scratch, base_scratch = Scratch(), Scratch()
        for name in sorted(template):
            dtype = wire[name].dtype
            if int8 and template[name].dtype in FLOAT_DTYPES:
                values, scales = reader.get(name, scratch), reader.get(scales_name(name))
                unusable = check_int8_values(name, template[name].dtype, values, scales)
                if unusable is not None:
                    raise reject(*unusable)
            elif dtype in FLOAT_DTYPES:
                tensor = reader.get(name, scratch)
                if not _all_finite(tensor):
                    bad = tensor.numel() - int(torch.isfinite(tensor).sum())
                    raise reject(
                        "non-finite",
                        f"tensor {name!r} holds {bad} NaN or infinite values of {tensor.numel()}",
                    )
            elif dtype in INT_DTYPES:
                problem = _int_range_problem(
                    base.get(name, base_scratch), reader.get(name, scratch), dtype, m.num_samples
                )
                if problem is not None:
                    raise reject("out-of-range", f"integer tensor {name!r}: {problem}")
            elif dtype == torch.bool and bool(reader.get(name, scratch).any()):
                raise reject(
                    "constant-changed",
                    f"bool tensor {name!r} was changed (its delta is not all-False); bool "
                    "tensors are constants of the model and cannot be averaged",
                )


__all__ = [
    "REJECT_REASONS",
    "VALIDATION_REASONS",
    "RejectReason",
    "RoundReason",
    "ValidationReason",
    "validate_update",
]
