"""The process kubelet lays out API-backed volumes as the kubelet's atomic writer does and
propagates Secret and ConfigMap updates into a running pod's volumes in one step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.kubelet import volumes as vol


class FakeLookup:
    """Secrets and ConfigMaps held in memory (the real lookup reads the API server)."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.maps: dict[str, dict[str, bytes]] = {}

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.secrets.get(name)

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.maps.get(name)


class CountingTokens:
    def __init__(self) -> None:
        self.issued = 0

    def token(self, *_: Any) -> str:
        self.issued += 1
        return f"token-{self.issued}"


def pod_with(*volumes: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"a": "1"}},
        "spec": {"volumes": list(volumes)},
    }


CREDS = {"name": "creds", "secret": {"secretName": "store", "defaultMode": 0o440}}


@pytest.fixture
def lookup() -> FakeLookup:
    found = FakeLookup()
    found.secrets["store"] = {"credentials.json": b'{"accessKeyId": "one"}'}
    found.maps["job"] = {"job.json": b"{}", "extra": b"x"}
    return found


def test_secret_volume_files_are_links_through_the_data_link(
    tmp_path: Path, lookup: FakeLookup
) -> None:
    paths = vol.prepare(pod_with(CREDS), tmp_path, lookup, CountingTokens())

    root = paths["creds"]
    assert (root / "credentials.json").read_bytes() == b'{"accessKeyId": "one"}'
    assert os.readlink(root / "credentials.json") == "..data/credentials.json"
    assert (root / vol.DATA_LINK).is_symlink()
    assert (root / "credentials.json").stat().st_mode & 0o777 == 0o440


def test_refresh_swaps_in_an_updated_secret_and_removes_the_old_payload(
    tmp_path: Path, lookup: FakeLookup
) -> None:
    pod = pod_with(CREDS)
    paths = vol.prepare(pod, tmp_path, lookup, CountingTokens())
    root = paths["creds"]
    before = (root / vol.DATA_LINK).resolve()
    lookup.secrets["store"] = {"credentials.json": b'{"accessKeyId": "two"}'}

    changed = vol.refresh(pod, paths, lookup, CountingTokens())

    assert changed == ["creds"]
    assert (root / "credentials.json").read_bytes() == b'{"accessKeyId": "two"}'
    assert not before.exists()
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("..")) == [
        "credentials.json"
    ]


def test_a_file_opened_before_the_update_keeps_reading_the_old_content(
    tmp_path: Path, lookup: FakeLookup
) -> None:
    pod = pod_with(CREDS)
    paths = vol.prepare(pod, tmp_path, lookup, CountingTokens())
    lookup.secrets["store"] = {"credentials.json": b'{"accessKeyId": "two"}'}

    with (paths["creds"] / "credentials.json").open("rb") as reader:
        vol.refresh(pod, paths, lookup, CountingTokens())
        assert reader.read() == b'{"accessKeyId": "one"}'
    assert (paths["creds"] / "credentials.json").read_bytes() == b'{"accessKeyId": "two"}'


def test_refresh_without_changes_rewrites_nothing(tmp_path: Path, lookup: FakeLookup) -> None:
    pod = pod_with(CREDS)
    paths = vol.prepare(pod, tmp_path, lookup, CountingTokens())
    before = (paths["creds"] / vol.DATA_LINK).resolve()

    changed = vol.refresh(pod, paths, lookup, CountingTokens())

    assert changed == []
    assert (paths["creds"] / vol.DATA_LINK).resolve() == before


def test_a_deleted_secret_leaves_the_running_pods_volume_as_it_was(
    tmp_path: Path, lookup: FakeLookup
) -> None:
    pod = pod_with(CREDS)
    paths = vol.prepare(pod, tmp_path, lookup, CountingTokens())
    del lookup.secrets["store"]

    changed = vol.refresh(pod, paths, lookup, CountingTokens())

    assert changed == []
    assert (paths["creds"] / "credentials.json").read_bytes() == b'{"accessKeyId": "one"}'


def test_configmap_keys_added_and_removed_appear_and_disappear(
    tmp_path: Path, lookup: FakeLookup
) -> None:
    pod = pod_with({"name": "job", "configMap": {"name": "job"}})
    paths = vol.prepare(pod, tmp_path, lookup, CountingTokens())
    lookup.maps["job"] = {"job.json": b'{"v": 2}', "new": b"n"}

    vol.refresh(pod, paths, lookup, CountingTokens())

    root = paths["job"]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("..")) == [
        "job.json",
        "new",
    ]
    assert (root / "job.json").read_bytes() == b'{"v": 2}'


def test_projected_volume_updates_its_secret_but_keeps_its_token(
    tmp_path: Path, lookup: FakeLookup
) -> None:
    pod = pod_with(
        {
            "name": "mixed",
            "projected": {
                "sources": [
                    {"secret": {"name": "store"}},
                    {"serviceAccountToken": {"path": "token"}},
                ]
            },
        }
    )
    tokens = CountingTokens()
    paths = vol.prepare(pod, tmp_path, lookup, tokens)
    lookup.secrets["store"] = {"credentials.json": b"rotated"}

    vol.refresh(pod, paths, lookup, tokens)

    assert (paths["mixed"] / "credentials.json").read_bytes() == b"rotated"
    assert (paths["mixed"] / "token").read_bytes() == b"token-1"
    assert tokens.issued == 1
