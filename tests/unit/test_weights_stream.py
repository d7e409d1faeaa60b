"""Streaming a safetensors file header first: the bytes ``save_weights`` writes, and no file
at all when the data does not match the header."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fedcore import model_loading
from fedcore.model_loading import load_into
from fedcore.weights import load_weights, open_weights, save_weights, template_of
from fedcore.weights_stream import StreamingWeightsWriter

TENSORS = {
    "b": torch.arange(3, dtype=torch.float32),
    "a": torch.arange(2, dtype=torch.int64),
    "c": torch.arange(5).to(torch.bfloat16),
    "d": torch.tensor([True]),
    "e": torch.arange(2).to(torch.float16),
    "f": torch.arange(2).to(torch.int8),
    "g": torch.arange(2).to(torch.uint8),
    "h": torch.arange(2).to(torch.int16),
    "i": torch.arange(2).to(torch.int32),
    "j": torch.arange(2).to(torch.float64),
    "k": torch.zeros(0, 3),
    "l": torch.arange(12.0).reshape(3, 4),
}


@pytest.mark.parametrize("metadata", [{}, {"kind": "global", "round": 7}], ids=["bare", "meta"])
def test_streamed_file_has_the_bytes_save_weights_writes(
    tmp_path: Path, metadata: dict[str, str | int]
) -> None:
    save_weights(tmp_path / "saved", TENSORS, metadata)

    with StreamingWeightsWriter(tmp_path / "streamed", template_of(TENSORS), metadata) as out:
        for name in out.order:
            flat = TENSORS[name].reshape(-1)
            for start in range(0, flat.numel(), 2):  # in slices of two elements
                out.write(name, flat[start : start + 2])

    assert (tmp_path / "streamed").read_bytes() == (tmp_path / "saved").read_bytes()


def test_data_out_of_order_or_short_leaves_no_file(tmp_path: Path) -> None:
    template = template_of(TENSORS)
    target = tmp_path / "model"

    with (
        pytest.raises(ValueError, match="out of order"),
        StreamingWeightsWriter(target, template) as out,
    ):
        out.write("b", TENSORS["b"])
    with (
        pytest.raises(ValueError, match="not written in full"),
        StreamingWeightsWriter(target, template) as out,
    ):
        out.write(out.order[0], TENSORS[out.order[0]])

    assert list(tmp_path.iterdir()) == []


def test_a_slice_of_another_dtype_or_too_long_is_refused(tmp_path: Path) -> None:
    template = {"w": template_of(TENSORS)["l"]}
    with StreamingWeightsWriter(tmp_path / "m", template) as out:
        with pytest.raises(ValueError, match="float64"):
            out.write("w", torch.zeros(4, dtype=torch.float64))
        with pytest.raises(ValueError, match="more data"):
            out.write("w", torch.zeros(13))
        out.write("w", TENSORS["l"])

    assert torch.equal(load_weights(tmp_path / "m")["w"], TENSORS["l"])


@pytest.mark.parametrize("batch_bytes", [1, 1 << 26], ids=["tensor-by-tensor", "one-batch"])
def test_load_into_copies_every_tensor_and_refuses_another_models_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_bytes: int
) -> None:
    monkeypatch.setattr(model_loading, "BATCH_BYTES", batch_bytes)
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    save_weights(tmp_path / "m", source.state_dict())
    save_weights(tmp_path / "other", nn.Linear(3, 2, bias=False).state_dict())

    with open_weights(tmp_path / "m") as saved:
        load_into(target, saved)
    with open_weights(tmp_path / "other") as saved, pytest.raises(ValueError, match="bias"):
        load_into(target, saved)

    assert torch.equal(target.weight, source.weight)
    assert torch.equal(target.bias, source.bias)
