"""Sharded (FSDP) updates: shards that tile the model pass; every way to cheat is rejected.

Each case builds the shards a group of ranks would write (``write_shard``), signs the
manifest listing them, then spoils one thing and runs the aggregator's gate
(``validate_update``), which must name the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedcore import layout
from fedcore.errors import UpdateRejected
from fedcore.intake import fetch_update
from fedcore.sharded_update import shard_path, shards_digest, shards_dir, write_shard
from fedcore.signing import SigningKey, sign_manifest
from fedcore.store import LocalStore
from fedcore.validation import validate_update
from fedcore.weights import (
    InMemoryWeights,
    Tensors,
    load_weights,
    save_weights,
    sha256_file,
    template_of,
)

CLIENT = "hospital-a"
ROUND = 3
BASE_SHA = "cd" * 32
KEY = SigningKey(b"k" * 64)
MAX_BYTES = 1 << 20


def model() -> Tensors:
    return {
        "a.weight": torch.arange(35, dtype=torch.float32).reshape(7, 5),
        "a.bias": torch.arange(7, dtype=torch.float32),
        "b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "scale": torch.tensor(2.0),
        "steps": torch.tensor([4], dtype=torch.int64),
    }


def fsdp_pieces(
    delta: Tensors, count: int
) -> list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]:
    """What ``count`` FSDP ranks write: torch.chunk's rows; 0-d and int tensors on rank 0."""
    out: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]] = [{} for _ in range(count)]
    for name, t in delta.items():
        if t.dim() == 0 or t.dtype == torch.int64:
            out[0][name] = (t, (0, 1) if t.dim() == 0 else (0, t.shape[0]))
            continue
        at = 0
        for i, chunk in enumerate(torch.chunk(t, count)):
            if chunk.shape[0]:
                out[i][name] = (chunk.contiguous(), (at, at + chunk.shape[0]))
                at += chunk.shape[0]
    return out


Spoil = Callable[[list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]], None]


def make_update(
    tmp: Path,
    *,
    count: int = 4,
    spoil: Spoil | None = None,
    after: Callable[[Path, layout.UpdateManifest], layout.UpdateManifest] | None = None,
) -> tuple[layout.UpdateManifest, Path, Tensors]:
    delta = {
        n: torch.full_like(t, 0.5) if t.is_floating_point() else torch.ones_like(t)
        for n, t in model().items()
    }
    pieces = fsdp_pieces(delta, count)
    if spoil is not None:
        spoil(pieces)
    update_path = tmp / "update.safetensors"
    folder = shards_dir(update_path)
    folder.mkdir()
    shards = [
        write_shard(
            shard_path(folder, i), p, round=ROUND, client=CLIENT, index=i, count=len(pieces)
        )
        for i, p in enumerate(pieces)
    ]
    manifest = layout.UpdateManifest(
        client=CLIENT,
        round=ROUND,
        base_round=ROUND - 1,
        base_sha256=BASE_SHA,
        num_samples=10,
        update_sha256=shards_digest(shards),
        update_bytes=sum(s.bytes for s in shards),
        dtype="float32",
        shards=shards,
    )
    if after is not None:
        manifest = after(folder, manifest)
    return sign_manifest(manifest, KEY), update_path, delta


def validate(manifest: layout.UpdateManifest, path: Path) -> layout.UpdateManifest:
    return validate_update(
        manifest.to_json(),
        path,
        client=CLIENT,
        expected_round=ROUND,
        base_sha256=BASE_SHA,
        template=template_of(model()),
        max_bytes=MAX_BYTES,
        key=KEY,
        base=InMemoryWeights(model()),
    )


def test_shards_that_tile_the_model_assemble_into_the_whole_update(tmp_path: Path) -> None:
    manifest, path, delta = make_update(tmp_path)

    validate(manifest, path)

    got = load_weights(path)
    assert got.keys() == delta.keys()
    for name in delta:
        assert torch.equal(got[name], delta[name]), name


def test_a_sharded_manifest_signs_its_shards_and_an_unsharded_one_signs_as_before() -> None:
    plain = layout.UpdateManifest(
        client=CLIENT,
        round=1,
        base_round=0,
        base_sha256=BASE_SHA,
        num_samples=1,
        update_sha256="ab" * 32,
        update_bytes=1,
        dtype="float32",
    )

    assert "shards" not in json.loads(plain.to_json())


def reorder_rows(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    t, (a, b) = pieces[1]["a.weight"]
    pieces[1]["a.weight"] = (t, (a - 1, b - 1))  # overlaps shard 0 by a row


def drop_piece(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    del pieces[2]["a.weight"]  # a gap


def duplicate_piece(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    pieces[3]["a.bias"] = pieces[0]["a.bias"]  # the same rows twice


def extra_tensor(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    pieces[1]["evil"] = (torch.zeros(1), (0, 1))


def missing_tensor(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    del pieces[0]["b.weight"], pieces[1]["b.weight"]


def wrong_width(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    t, rows = pieces[0]["a.weight"]
    pieces[0]["a.weight"] = (torch.zeros(t.shape[0], 6), rows)


def mixed_dtype(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    t, rows = pieces[1]["a.weight"]
    pieces[1]["a.weight"] = (t.double(), rows)


def nan_piece(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    t, rows = pieces[3]["a.weight"]
    pieces[3]["a.weight"] = (torch.full_like(t, float("nan")), rows)


def past_the_end(pieces: list[dict[str, tuple[torch.Tensor, tuple[int, int]]]]) -> None:
    _, (a, b) = pieces[3]["a.weight"]
    pieces[3]["a.weight"] = (torch.zeros(2, 5), (a, b + 1))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (reorder_rows, "malformed-update"),
        (drop_piece, "malformed-update"),
        (duplicate_piece, "malformed-update"),
        (extra_tensor, "unknown-tensor"),
        (missing_tensor, "missing-tensor"),
        (wrong_width, "shape-mismatch"),
        (mixed_dtype, "dtype-mismatch"),
        (nan_piece, "non-finite"),
        (past_the_end, "shape-mismatch"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_shards_that_do_not_tile_the_model_exactly_once_are_rejected(
    tmp_path: Path, spoil: Spoil, reason: str
) -> None:
    manifest, path, _ = make_update(tmp_path, spoil=spoil)

    with pytest.raises(UpdateRejected) as e:
        validate(manifest, path)

    assert e.value.reason == reason, e.value.detail


def swap_shards(folder: Path, m: layout.UpdateManifest) -> layout.UpdateManifest:
    a, b = shard_path(folder, 0), shard_path(folder, 1)
    tmp = folder / "swap"
    a.rename(tmp), b.rename(a), tmp.rename(b)
    shards = [m.shards[1], m.shards[0], *m.shards[2:]]
    return m.model_copy(update={"shards": shards, "update_sha256": shards_digest(shards)})


def wrong_digest_field(folder: Path, m: layout.UpdateManifest) -> layout.UpdateManifest:
    return m.model_copy(update={"update_sha256": "00" * 32})


def test_a_shard_changed_after_signing_is_a_bad_signature(tmp_path: Path) -> None:
    manifest, path, _ = make_update(tmp_path)
    target = shard_path(shards_dir(path), 2)
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))

    with pytest.raises(UpdateRejected) as e:
        validate(manifest, path)

    assert e.value.reason == "bad-signature"


def test_shards_swapped_between_ranks_are_rejected_even_when_relisted(tmp_path: Path) -> None:
    # Each shard says which one it is; listing them swapped (and signing that) still fails.
    manifest, path, _ = make_update(tmp_path, after=swap_shards)

    with pytest.raises(UpdateRejected) as e:
        validate(manifest, path)

    assert e.value.reason == "malformed-update"


def test_a_manifest_whose_digest_field_is_not_its_shards_is_a_bad_manifest(
    tmp_path: Path,
) -> None:
    manifest, path, _ = make_update(tmp_path, after=wrong_digest_field)

    with pytest.raises(UpdateRejected) as e:
        validate(manifest, path)

    assert e.value.reason == "bad-manifest"


def test_an_unsigned_shard_list_is_not_even_read(tmp_path: Path) -> None:
    manifest, path, _ = make_update(tmp_path)
    forged = manifest.model_copy(update={"signature": "00" * 32})

    with pytest.raises(UpdateRejected) as e:
        validate(forged, path)

    assert e.value.reason == "bad-signature"


def test_a_shard_missing_from_the_folder_is_a_bad_signature(tmp_path: Path) -> None:
    manifest, path, _ = make_update(tmp_path)
    shard_path(shards_dir(path), 1).unlink()

    with pytest.raises(UpdateRejected) as e:
        validate(manifest, path)

    assert e.value.reason == "bad-signature"


def test_a_whole_file_beside_the_shards_is_not_what_is_validated(tmp_path: Path) -> None:
    manifest, path, delta = make_update(tmp_path)
    save_weights(path, {n: torch.zeros_like(t) for n, t in delta.items()})
    before = sha256_file(path)

    validate(manifest, path)

    assert sha256_file(path) != before  # assembled from the shards, over whatever was there


# ---- the aggregator's intake: sizes from the store before any download -----------------------


def stored_update(tmp: Path) -> tuple[LocalStore, layout.UpdateManifest]:
    manifest, path, _ = make_update(tmp)
    store = LocalStore(tmp / "store", "job/")
    for i in range(len(manifest.shards)):
        store.put_file(
            layout.shard_key(ROUND, CLIENT, i, len(manifest.shards)),
            shard_path(shards_dir(path), i),
        )
    store.put_bytes(layout.manifest_key(ROUND, CLIENT), manifest.to_json())
    return store, manifest


def test_intake_downloads_every_listed_shard_beside_the_update_path(tmp_path: Path) -> None:
    store, manifest = stored_update(tmp_path)
    target = tmp_path / "in" / "update.safetensors"
    target.parent.mkdir()

    raw = fetch_update(store, ROUND, CLIENT, target, max_update_bytes=MAX_BYTES)

    assert layout.UpdateManifest.model_validate_json(raw) == manifest
    assert sorted(p.name for p in shards_dir(target).iterdir()) == [
        f"{i:05d}.safetensors" for i in range(4)
    ]


def test_intake_refuses_a_missing_shard_a_resized_one_and_too_many_bytes(tmp_path: Path) -> None:
    store, manifest = stored_update(tmp_path)
    target = tmp_path / "in" / "update.safetensors"
    target.parent.mkdir()

    with pytest.raises(UpdateRejected) as e:
        fetch_update(store, ROUND, CLIENT, target, max_update_bytes=manifest.update_bytes - 1)
    assert e.value.reason == "too-large"

    store.delete(layout.shard_key(ROUND, CLIENT, 3, 4))
    with pytest.raises(UpdateRejected) as e:
        fetch_update(store, ROUND, CLIENT, target, max_update_bytes=MAX_BYTES)
    assert e.value.reason == "malformed-update"

    store.put_bytes(layout.shard_key(ROUND, CLIENT, 2, 4), b"short")  # checked before 3
    with pytest.raises(UpdateRejected) as e:
        fetch_update(store, ROUND, CLIENT, target, max_update_bytes=MAX_BYTES)
    assert e.value.reason == "bad-signature"
