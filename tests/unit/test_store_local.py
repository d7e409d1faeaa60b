"""LocalStore's own promises, beyond the shared contract: where digests live, what a crash
leaves behind, and that a copied store still verifies. The contract suite
(tests/integration/test_store_contract.py) runs the common behaviour on it too."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fedcore.errors import IntegrityError, StoreError
from fedcore.store import LocalStore
from fedcore.store.local import LOCK_NAME, SIDECAR_PREFIX


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "root", prefix="fedkube/ns/job-1")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_object_is_a_plain_file_at_root_prefix_key(store: LocalStore, tmp_path: Path) -> None:
    store.put_bytes("final/model.safetensors", b"weights")

    path = tmp_path / "root" / "fedkube/ns/job-1/final/model.safetensors"
    assert path.read_bytes() == b"weights"
    assert store.uri("final/model.safetensors") == path.as_uri()


def test_the_digest_is_a_sidecar_line_of_sha256_and_inode(store: LocalStore) -> None:
    store.put_bytes("rounds/000001/round.json", b"{}")

    path = store.base / "rounds/000001/round.json"
    sidecar = path.with_name(SIDECAR_PREFIX + "round.json")
    assert sidecar.read_text() == f"{_sha(b'{}')} {path.stat().st_ino}\n"


def test_an_overwrite_keeps_the_previous_digest_for_readers_in_flight(store: LocalStore) -> None:
    store.put_bytes("k", b"one")
    first_inode = (store.base / "k").stat().st_ino
    store.put_bytes("k", b"two")

    lines = (store.base / (SIDECAR_PREFIX + "k")).read_text().splitlines()
    assert lines == [
        f"{_sha(b'two')} {(store.base / 'k').stat().st_ino}",
        f"{_sha(b'one')} {first_inode}",
    ]


def test_a_sidecar_keeps_at_most_the_current_and_the_previous_version(store: LocalStore) -> None:
    for version in (b"1", b"2", b"3", b"4"):
        store.put_bytes("k", version)

    lines = (store.base / (SIDECAR_PREFIX + "k")).read_text().splitlines()
    assert [line.split()[0] for line in lines] == [_sha(b"4"), _sha(b"3")]


def test_new_objects_get_the_usual_permissions_not_temp_file_ones(store: LocalStore) -> None:
    old = os.umask(0o022)
    try:
        store.put_bytes("job.json", b"{}")
    finally:
        os.umask(old)

    assert (store.base / "job.json").stat().st_mode & 0o777 == 0o644


def test_a_crashed_writers_temp_file_is_invisible(store: LocalStore) -> None:
    store.put_bytes("rounds/000001/round.json", b"{}")
    (store.base / "rounds/000001/.fedkube-tmp-0123456789abcdef").write_bytes(b"half a mod")

    assert store.list() == ["rounds/000001/round.json"]
    assert store.get_bytes("rounds/000001/round.json") == b"{}"


def test_a_crash_between_digest_and_content_leaves_the_old_object_readable(
    store: LocalStore,
) -> None:
    # What a writer killed after its sidecar rename and before its content rename leaves:
    # a digest line for content that never appeared, in front of the real one.
    store.put_bytes("control/excluded.json", b"old")
    sidecar = store.base / "control" / (SIDECAR_PREFIX + "excluded.json")
    sidecar.write_text(f"{_sha(b'never landed')} 999999\n" + sidecar.read_text())

    assert store.get_bytes("control/excluded.json") == b"old"
    store.put_bytes("control/excluded.json", b"new")
    assert store.get_bytes("control/excluded.json") == b"new"


def test_a_copied_store_still_verifies_although_inodes_changed(
    store: LocalStore, tmp_path: Path
) -> None:
    store.put_bytes("rounds/000001/global.safetensors", b"w1")
    store.put_bytes("job.json", b"{}")
    subprocess.run(["cp", "-r", str(tmp_path / "root"), str(tmp_path / "copy")], check=True)
    copy = LocalStore(tmp_path / "copy", prefix="fedkube/ns/job-1")

    assert copy.get_bytes("rounds/000001/global.safetensors") == b"w1"
    assert copy.list() == ["job.json", "rounds/000001/global.safetensors"]


def test_a_copied_then_corrupted_object_is_still_caught(store: LocalStore, tmp_path: Path) -> None:
    store.put_bytes("job.json", b"{}")
    shutil.copytree(tmp_path / "root", tmp_path / "copy")
    (tmp_path / "copy/fedkube/ns/job-1/job.json").write_bytes(b"[]")

    with pytest.raises(IntegrityError, match=_sha(b"{}")):
        LocalStore(tmp_path / "copy", prefix="fedkube/ns/job-1").get_bytes("job.json")


def test_a_file_dropped_into_the_folder_by_hand_is_listed_but_unverifiable(
    store: LocalStore,
) -> None:
    store.base.mkdir(parents=True)
    (store.base / "notes.txt").write_bytes(b"hand made")

    assert store.list() == ["notes.txt"]
    with pytest.raises(IntegrityError, match="no recorded sha256"):
        store.get_bytes("notes.txt")


def test_delete_removes_the_digest_with_the_object(store: LocalStore) -> None:
    store.put_bytes("a/b.json", b"{}")

    store.delete("a/b.json")

    assert sorted(p.name for p in (store.base / "a").iterdir()) == [LOCK_NAME]


def test_an_object_cannot_share_its_name_with_a_folder_of_objects(store: LocalStore) -> None:
    store.put_bytes("rounds/000001/round.json", b"{}")

    with pytest.raises(StoreError, match="cannot hold an object and a folder of the same name"):
        store.put_bytes("rounds", b"x")
    with pytest.raises(StoreError, match="cannot hold an object and a folder of the same name"):
        store.put_bytes("rounds/000001/round.json/inner", b"x")
    assert store.list() == ["rounds/000001/round.json"]


def test_a_write_failing_midway_leaves_no_temp_file_and_the_old_object(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_bytes("k", b"first")

    def disk_error(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_error)
    with pytest.raises(StoreError, match=r"cannot write .*/k: Input/output error"):
        store.put_bytes("k", b"second")
    monkeypatch.undo()
    with pytest.raises(StoreError):
        store.put_bytes("k/child", b"x")
    with pytest.raises(FileNotFoundError):
        store.put_file("k2", tmp_path / "missing")

    assert store.get_bytes("k") == b"first"
    assert sorted(p.name for p in store.base.iterdir()) == sorted(
        [SIDECAR_PREFIX + "k", LOCK_NAME, "k"]
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_an_unwritable_store_folder_is_a_store_error_that_says_so(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="permission denied; make the folder writable"):
            LocalStore(root).put_bytes("k", b"x")
    finally:
        root.chmod(0o700)


def test_list_below_a_missing_folder_is_empty(store: LocalStore) -> None:
    assert store.list() == []
    assert store.list("rounds/000009/") == []


def test_repr_names_the_folder_and_prefix(store: LocalStore, tmp_path: Path) -> None:
    assert repr(store) == f"LocalStore(root={str(tmp_path / 'root')!r}, prefix='fedkube/ns/job-1/')"
