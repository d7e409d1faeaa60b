"""The public surface of fedcore.store: its names, the factory, and its import weight (the
operator imports it and carries neither torch nor, for local stores, boto3)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fedcore.store
from fedcore.errors import StoreError
from fedcore.spec import StorageSpec
from fedcore.store import LocalStore, ObjectStore, S3Config, S3Store, open_store

STORE_PACKAGE = Path(fedcore.store.__file__).parent
FEDCORE = STORE_PACKAGE.parent


def test_the_public_names_are_pinned() -> None:
    assert fedcore.store.__all__ == [
        "STORE_DIR_ENV",
        "LocalStore",
        "ObjectStore",
        "S3Config",
        "S3Store",
        "open_job_store",
        "open_store",
    ]


def test_a_job_store_is_local_under_the_store_dir_variable(tmp_path: Path) -> None:
    from fedcore.spec import parse_job
    from fedcore.store import STORE_DIR_ENV, open_job_store

    job = parse_job(
        {"spec": {"rounds": 1, "task": {"entrypoint": "a:b"}, "clients": [{"name": "a"}]}}
    )

    store = open_job_store(job, {STORE_DIR_ENV: str(tmp_path)})

    assert isinstance(store, LocalStore)
    assert store.uri("job.json") == (tmp_path / "fedkube/local/job/job.json").as_uri()


def test_both_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    s3 = S3Store(S3Config(bucket="b", endpoint="http://127.0.0.1:9"))

    assert isinstance(LocalStore(tmp_path), ObjectStore)
    assert isinstance(s3, ObjectStore)


def test_open_store_without_storage_is_a_local_store_under_the_root(tmp_path: Path) -> None:
    store = open_store(None, "fedkube/local/job-1/", local_root=tmp_path)

    assert isinstance(store, LocalStore)
    assert store.base == tmp_path / "fedkube/local/job-1"


def test_open_store_without_an_endpoint_is_a_local_store(tmp_path: Path) -> None:
    store = open_store(StorageSpec(bucket="fedkube"), "p/", local_root=tmp_path)

    assert isinstance(store, LocalStore)


def test_open_store_needs_a_root_for_a_local_store() -> None:
    with pytest.raises(StoreError, match="FEDKUBE_STORE_DIR"):
        open_store(None, "p/")


def test_open_store_with_an_endpoint_is_an_s3_store_configured_from_the_spec() -> None:
    spec = StorageSpec(endpoint="http://minio.minio:9000", bucket="models", region="eu-west-1")

    store = open_store(spec, "fedkube/ns/job-abcdef12/")

    assert isinstance(store, S3Store)
    assert store.config == S3Config(
        bucket="models",
        endpoint="http://minio.minio:9000",
        prefix="fedkube/ns/job-abcdef12/",
        region="eu-west-1",
    )


def test_importing_the_store_loads_neither_torch_nor_boto3() -> None:
    code = (
        "import sys, fedcore.store\n"
        "from fedcore.store import LocalStore, open_store\n"
        "heavy = sorted(m for m in ('torch', 'boto3', 'botocore', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == ""


def test_only_the_s3_and_sts_modules_import_boto3() -> None:
    importers = []
    for path in sorted(FEDCORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("boto3", "botocore", "s3transfer") for n in names):
                importers.append(path.relative_to(FEDCORE).as_posix())

    assert sorted(set(importers)) == ["store/s3.py", "store/sts.py"]
