"""Weights on the wire: safetensors round trips, lazy reads, tied weights, deltas."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from fedcore.errors import FedcoreError
from fedcore.weights import (
    InMemoryWeights,
    TensorSpec,
    apply,
    delta,
    load_weights,
    open_weights,
    save_weights,
    sha256_file,
    template_of,
    update_metadata,
)


def mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fc.weight": torch.randn(4, 3, generator=g),
        "fc.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "half": torch.randn(2, 2, generator=g).to(torch.float16),
        "double": torch.randn(3, generator=g, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(7),
        "mask": torch.tensor([True, False, True]),
        "counts": torch.tensor([1, 2, 3], dtype=torch.uint8),
        "empty": torch.zeros(0, 5),
    }


def test_save_then_open_round_trips_names_values_dtypes_and_metadata(tmp_path: Path) -> None:
    tensors = mixed_tensors()
    path = tmp_path / "w.safetensors"

    save_weights(path, tensors, {"kind": "global", "round": 3})

    with open_weights(path) as reader:
        assert reader.metadata == {"kind": "global", "round": "3"}
        assert reader.keys() == sorted(tensors)
        assert reader.template() == template_of(tensors)
        for name, tensor in tensors.items():
            got = reader.get(name)
            assert got.dtype == tensor.dtype
            assert torch.equal(got, tensor), name


def test_reader_reports_specs_from_the_header_and_reads_one_tensor_on_demand(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.ones(2, 3), "b": torch.zeros(5, dtype=torch.int32)})

    with open_weights(path) as reader:
        spec = reader.spec("b")
        first = next(reader.items())

    assert spec == TensorSpec((5,), torch.int32)
    assert first[0] == "a"
    assert torch.equal(first[1], torch.ones(2, 3))


def test_tied_weights_are_saved_under_every_name_and_reload_into_a_tied_model(
    tmp_path: Path,
) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(6, 4)
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    path = tmp_path / "tied.safetensors"

    save_weights(path, model.state_dict())
    fresh = Tied()
    fresh.load_state_dict(load_weights(path))

    assert set(load_weights(path)) == {"embed.weight", "head.weight"}
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    assert fresh.head.weight is fresh.embed.weight


def test_non_contiguous_and_view_tensors_are_saved_as_their_values(tmp_path: Path) -> None:
    fused = torch.arange(12.0).reshape(3, 4)
    tensors = {"t": fused.t(), "q": fused[0], "k": fused[1]}
    path = tmp_path / "views.safetensors"

    save_weights(path, tensors)

    loaded = load_weights(path)
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name


def test_save_replaces_the_file_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.zeros(2)})

    save_weights(path, {"a": torch.ones(2)})

    assert torch.equal(load_weights(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_unsupported_dtype_is_refused_with_the_tensor_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'z'.*complex64"):
        save_weights(tmp_path / "w.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})


def test_garbage_file_raises_fedcore_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")

    with pytest.raises(FedcoreError, match=r"garbage\.safetensors"):
        open_weights(path)


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.arange(1000.0)})

    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_update_metadata_names_kind_round_and_client() -> None:
    assert update_metadata(4, "hospital-a") == {
        "kind": "update",
        "round": "4",
        "client": "hospital-a",
    }


def test_apply_of_delta_recovers_the_local_model() -> None:
    base = mixed_tensors()
    local = {k: v.clone() for k, v in base.items()}
    local["fc.weight"] += 0.25
    local["bn.num_batches_tracked"] += 5
    local["counts"] += 1

    restored = apply(base, delta(local, base))

    for name in base:
        assert restored[name].dtype == base[name].dtype
        assert torch.equal(restored[name], local[name]), name


def test_delta_can_travel_in_bfloat16_while_integers_keep_their_dtype() -> None:
    base = {"w": torch.zeros(3), "steps": torch.tensor(1)}
    local = {"w": torch.tensor([0.5, -1.0, 2.0]), "steps": torch.tensor(4)}

    d = delta(local, base, wire_dtype=torch.bfloat16)

    assert d["w"].dtype == torch.bfloat16
    assert torch.equal(d["w"].float(), local["w"])
    assert d["steps"].dtype == torch.int64
    assert int(d["steps"]) == 3


def test_delta_refuses_a_changed_bool_tensor() -> None:
    base = {"mask": torch.tensor([True, False])}
    local = {"mask": torch.tensor([True, True])}

    with pytest.raises(ValueError, match="bool tensor 'mask' changed"):
        delta(local, base)


def test_delta_refuses_models_with_different_tensors() -> None:
    base = {"a": torch.zeros(2), "b": torch.zeros(2)}
    local = {"a": torch.zeros(2), "c": torch.zeros(2)}

    with pytest.raises(ValueError, match=r"missing \['b'\].*unexpected \['c'\]"):
        delta(local, base)


def test_integer_delta_that_does_not_fit_the_dtype_is_refused() -> None:
    base = {"counts": torch.tensor([5], dtype=torch.uint8)}
    local = {"counts": torch.tensor([2], dtype=torch.uint8)}

    with pytest.raises(ValueError, match=r"'counts' does not fit uint8"):
        delta(local, base)


def test_in_memory_weights_present_the_same_template_as_a_file(tmp_path: Path) -> None:
    tensors = mixed_tensors()
    path = tmp_path / "w.safetensors"
    save_weights(path, tensors)

    with open_weights(path) as reader:
        assert InMemoryWeights(tensors).template() == reader.template()


def test_a_file_truncated_after_opening_fails_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.ones(1000), "b": torch.ones(1000)})

    with open_weights(path) as reader:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 100)
        with pytest.raises(FedcoreError, match="truncated"):
            reader.get("b")
