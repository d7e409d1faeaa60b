"""Fuzzing the aggregator's round loop: two honest clients and one whose update is mutated.

Each example commits round 0 in a fresh LocalStore, writes the honest updates of ``a`` and
``b`` and a mutated one from ``m`` (a manifest field set to any JSON value, manifest or
weights bytes edited, a tensor replaced by a hostile one; signed again with m's key or not),
then runs round 1 in an in-process Aggregator. Whatever m sent:

* no exception escapes the round loop, and the round commits;
* every rejection carries a reason code from ``REJECT_REASONS``;
* the honest updates are folded exactly: the committed model equals a hand-computed FedAvg
  of a and b (and of m when its update was accepted), bit for bit;
* the committed model is finite and its record reads back.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch
from hypothesis import event, given
from hypothesis import strategies as st

from fedcore import layout
from fedcore.signing import signature_of
from fedcore.validation import REJECT_REASONS
from fedcore.weights import Tensors, load_weights, save_weights, sha256_file, update_metadata
from tests.fixtures.fuzz import (
    MANIFEST_FIELDS,
    byte_edits,
    edit_bytes,
    fuzz_settings,
    hostile_float,
    json_value,
)
from tests.integration.test_aggregator_hostile import Scene, delta, make_job

FUZZ = fuzz_settings(max_examples=50)
HONEST = {"a": (delta(1.0, steps=2), 1), "b": (delta(-2.0, steps=1), 3)}


def by_hand(base: Tensors, updates: list[tuple[Tensors, int]], lr: float = 1.0) -> Tensors:
    """FedAvg as its docstring states it: ``base + η Σ n_k Δ_k / n`` in float64, rounded once
    to the model's dtype; integers exactly, the mean rounded half up (η not applied). Also
    FedAvgM's first round, whose momentum starts at zero."""
    n = sum(k for _, k in updates)
    out: Tensors = {}
    for name, b in base.items():
        if b.dtype.is_floating_point:
            acc = torch.zeros(b.shape, dtype=torch.float64)
            for d, k in updates:
                acc.add_(d[name], alpha=k)
            acc.div_(n)
            if lr != 1.0:
                acc.mul_(lr)
            out[name] = acc.add_(b).to(b.dtype)
        else:
            total = sum(int(d[name]) * k for d, k in updates)
            out[name] = torch.tensor(int(b) + (2 * total + n) // (2 * n), dtype=b.dtype)
    return out


big_float = st.sampled_from([3e38, -3e38, 1e30, 1.7e308, -1e300])
"""Finite values that overflow once scaled or summed."""

mutations = st.one_of(
    st.tuples(
        st.just("field"), st.sampled_from(MANIFEST_FIELDS), json_value, st.booleans(), st.booleans()
    ),
    st.tuples(st.just("manifest-bytes"), byte_edits),
    st.tuples(st.just("weights-bytes"), byte_edits, st.booleans()),
    st.tuples(
        st.just("tensor"),
        st.sampled_from(["fc.weight", "fc.bias", "steps", "total", "scale"]),
        st.lists(big_float | hostile_float, min_size=8, max_size=8),
        st.sampled_from([2**31 - 1, 2**60, 2**62, -(2**63), 2**63 - 1, 7])
        | st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.sampled_from([1, 5, 10**12]),
    ),
)


def hostile_update(scene: Scene, mutation: tuple[Any, ...]) -> None:
    """Write m's update for round 1 as the mutation says."""
    kind = mutation[0]
    tensors = delta(0.25, steps=1)
    num_samples = 2
    if kind == "tensor":
        _, name, floats, integer, num_samples = mutation
        spec = tensors[name]
        if spec.dtype.is_floating_point:
            values = torch.tensor(floats[: spec.numel()], dtype=torch.float64)
            tensors[name] = values.reshape(spec.shape).to(spec.dtype)
        else:
            info = torch.iinfo(spec.dtype)
            tensors[name] = torch.tensor(min(max(integer, info.min), info.max), dtype=spec.dtype)
    path = scene.workdir / "m.safetensors"
    save_weights(path, tensors, update_metadata(1, "m"))
    fields: dict[str, Any] = {
        "client": "m",
        "round": 1,
        "base_round": 0,
        "base_sha256": scene.r0.model_sha256,
        "num_samples": num_samples,
        "metrics": {"train_loss": 0.5},
        "update_sha256": sha256_file(path),
        "update_bytes": path.stat().st_size,
        "dtype": "float32",
        "created_at": "2026-01-01T00:00:00Z",
    }
    resign = True
    if kind == "field":
        _, field, value, delete, resign = mutation
        if delete:
            fields.pop(field, None)
        else:
            fields[field] = value
    elif kind == "weights-bytes":
        _, edits, resign = mutation
        path.write_bytes(edit_bytes(path.read_bytes(), edits))
        if resign:
            fields.update(update_sha256=sha256_file(path), update_bytes=path.stat().st_size)
    if resign:
        with contextlib.suppress(ValueError, TypeError):  # fields no signature can cover
            fields["signature"] = signature_of(fields, scene.keys["m"])
    manifest = json.dumps(fields).encode()
    if kind == "manifest-bytes":
        manifest = edit_bytes(manifest, mutation[1])
    scene.store.put_file(layout.update_key(1, "m"), path)
    scene.store.put_bytes(layout.manifest_key(1, "m"), manifest)


STRATEGIES = {
    "fedavg": ({}, 1.0),
    "fedavgm, serverLearningRate 10": (
        {"name": "fedavgm", "serverLearningRate": 10, "serverMomentum": 0.9},
        10.0,
    ),
}
"""With a server learning rate of 10, finite hostile values overflow the model: the guard
rejects them (``non-finite-aggregate``) and the round is recomputed from a and b."""


@FUZZ
@given(mutation=mutations, strategy=st.sampled_from(sorted(STRATEGIES)))
def test_round_loop_rejects_or_folds_a_mutated_update_and_folds_the_honest_ones_exactly(
    mutation: tuple[Any, ...], strategy: str
) -> None:
    spec, lr = STRATEGIES[strategy]
    with TemporaryDirectory() as tmp:
        scene = Scene(Path(tmp), make_job(("a", "b", "m"), strategy=spec))
        for client, (tensors, n) in HONEST.items():
            scene.send(client, tensors, n)
        hostile_update(scene, mutation)

        scene.new_aggregator().run_round(1, scene.r0)

        record = scene.record(1)
        got = scene.global_model(1)
        updates = list(HONEST.values())
        if "m" in record.participants:
            stored = scene.workdir / "m-stored.safetensors"
            scene.store.get_file(layout.update_key(1, "m"), stored)
            updates.append((load_weights(stored), record.num_samples["m"]))
        expected = by_hand(scene.w0, updates, lr)

    outcome = {x.client: x.reason for x in record.rejected}.get("m", "folded")
    event(f"{mutation[0]}: {outcome}")
    assert set(record.participants) >= {"a", "b"}
    assert all(x.reason in REJECT_REASONS and x.detail for x in record.rejected)
    assert "m" in record.participants or "m" in {x.client for x in record.rejected}
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert all(bool(torch.isfinite(t).all()) for t in got.values() if t.is_floating_point())
    assert all(math.isfinite(v) for v in record.metrics.values())
