"""The MinIO manager the integration and e2e tests share: it binds where it is told, serves
its bucket with its own random credentials, logs to a file and leaves no process behind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.fixtures.minio import MinioServer

pytestmark = pytest.mark.integration


def _can_bind(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["127.0.0.2", "0.0.0.0"])
def test_a_server_binds_the_given_address_and_stops_cleanly(
    host: str, tmp_path: Path, minio_executable: Path
) -> None:
    if not _can_bind(host):
        pytest.skip(f"{host} is not an address of this machine")
    server = MinioServer(minio_executable, tmp_path / "m", host=host, bucket="e2e")

    with server:
        process = server._process
        client = server.client()
        client.put_object(Bucket="e2e", Key="k", Body=b"v")
        body = client.get_object(Bucket="e2e", Key="k")["Body"].read()

    assert body == b"v"
    expected = "127.0.0.1" if host == "0.0.0.0" else host
    assert server.endpoint == f"http://{expected}:{server.port}"
    assert process is not None
    assert process.poll() is not None  # stopped, not orphaned
    assert server.log_path.read_text().startswith(f"--- starting MinIO on {host}:")


def test_two_servers_get_different_credentials_and_ports(
    tmp_path: Path, minio: MinioServer
) -> None:
    other = MinioServer(minio.binary, tmp_path / "other")

    with other:
        assert other.port != minio.port
        assert other.access_key != minio.access_key
        assert other.secret_key != minio.secret_key
        assert other.secret_key not in repr(other)
        assert set(other.env()) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}
