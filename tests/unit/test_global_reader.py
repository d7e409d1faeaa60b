"""An FSDP rank's ranged reader of the global model refuses a hostile header, never crashes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from fedcore.errors import RoundProtocolError
from fedcore.sharding import GlobalReader, RowSpan
from fedcore.store.local import LocalStore
from fedcore.weights import save_weights

KEY = "rounds/000000/global.safetensors"


def store_with(tmp_path: Path, data: bytes) -> tuple[LocalStore, int]:
    store = LocalStore(tmp_path)
    store.put_bytes(KEY, data)
    return store, len(data)


def safetensors_bytes(header: Any, body: bytes = b"\0" * 16) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def test_rows_of_a_real_global_model_are_read(tmp_path: Path) -> None:
    weights = {"w": torch.arange(12, dtype=torch.float32).reshape(4, 3)}
    save_weights(tmp_path / "g.safetensors", weights)
    store, size = store_with(tmp_path / "store", (tmp_path / "g.safetensors").read_bytes())

    reader = GlobalReader(store, KEY, "global", size)
    rows = reader.read_rows("w", weights["w"], RowSpan(1, 3, whole=False))

    assert torch.equal(rows, weights["w"][1:3])


@pytest.mark.parametrize(
    "header",
    [
        pytest.param([1, 2], id="not-an-object"),
        pytest.param({"w": "F32"}, id="entry-not-an-object"),
        pytest.param({"w": {"dtype": "F128", "shape": [4], "data_offsets": [0, 16]}}, id="dtype"),
        pytest.param({"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, id="size"),
        pytest.param({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, -16]}}, id="neg"),
        pytest.param({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, id="past-end"),
        pytest.param(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [float("inf"), 16]}},
            id="infinite-offset",
        ),
        pytest.param({"w": {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 16]}}, id="type"),
    ],
)
def test_a_hostile_header_is_a_protocol_error(tmp_path: Path, header: Any) -> None:
    store, size = store_with(tmp_path, safetensors_bytes(header))

    with pytest.raises(RoundProtocolError):
        GlobalReader(store, KEY, "global", size)


def test_a_header_length_past_the_object_is_a_protocol_error(tmp_path: Path) -> None:
    store, size = store_with(tmp_path, struct.pack("<Q", 1 << 40) + b"{}")

    with pytest.raises(RoundProtocolError, match="header"):
        GlobalReader(store, KEY, "global", size)
