"""A site joins a coordinator-run job through the bucket alone: ``fedkube run`` on real MinIO
with scoped credentials runs the aggregator and two clients and writes the third client's
join bundle; ``fedkube client --bundle`` (two gloo processes, no cluster, no AWS variables)
takes part in every round from that file, and the job succeeds."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcore import layout
from fedcore.commit_signing import load_verifier
from fedcore.exitcodes import EXIT_CONFIG
from fedcore.join_bundle import read_bundle
from fedcore.spec import job_prefix
from tests.fixtures.minio import MinioServer, free_port
from tests.integration.test_run_local import (
    REPO,
    RUN_SECONDS,
    leftovers,
    start_run,
    wait_for,
    write_job,
)

SITE = "site-c"


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, and afterwards: no process of the test may be left; kill any and fail."""
    yield tmp_path
    left = leftovers(str(tmp_path))
    for proc in left:
        proc.kill()
    assert not left, f"processes left behind: {[p.info['cmdline'] for p in left]}"


def site_env() -> dict[str, str]:
    """The site machine's environment: nothing of the coordinator's store credential."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "PYTHONPATH": str(REPO)}


def test_a_site_joins_through_its_bundle_with_two_gloo_processes_and_the_job_succeeds(
    minio: MinioServer, tmp: Path
) -> None:
    prefix = f"runs/site-{secrets.token_hex(4)}/"
    storage = {"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": prefix}
    clients = [{"name": "a"}, {"name": "b"}, {"name": SITE, "site": {}}]
    job_file = write_job(tmp / "job.yaml", clients=clients, rounds=2, storage=storage)
    bundle_file = tmp / "run" / "sites" / f"{SITE}.json"

    run = start_run(job_file, tmp / "run", env=minio.env())
    wait_for(bundle_file.exists, "the site's join bundle")
    bundle = read_bundle(bundle_file)
    site = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedcore.cli",
            "client",
            "--bundle",
            str(bundle_file),
            "--nproc-per-node",
            "2",
        ],
        cwd=tmp,
        env=site_env(),
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    code = run.wait()

    assert site.returncode == 0, site.stderr[-4000:]
    assert code == 0, run.stderr()
    assert stat.S_IMODE(bundle_file.stat().st_mode) == 0o600
    assert (bundle.client, job_prefix(bundle.job)) == (SITE, prefix)
    assert f"site {SITE}: join bundle" in run.stdout()
    assert not (tmp / "run" / "logs" / f"{SITE}-0.log").exists()  # the runner ran nothing
    assert "starting 2 process(es)" in site.stderr
    s3 = minio.client()
    verifier = load_verifier(tmp / "run" / "commit-key" / "public.pem")
    for r in (1, 2):
        body = s3.get_object(Bucket=minio.bucket, Key=prefix + layout.round_record_key(r))
        record = layout.RoundRecord.model_validate_json(body["Body"].read())
        assert verifier.verify("round", record)
        assert sorted(record.participants) == ["a", "b", SITE]
    final = json.loads(
        s3.get_object(Bucket=minio.bucket, Key=prefix + layout.FINAL_RECORD_KEY)["Body"].read()
    )
    assert final["rounds"] == 2


def test_a_run_with_a_site_on_a_local_folder_fails_at_once_naming_the_endpoint(tmp: Path) -> None:
    clients = [{"name": "a"}, {"name": SITE, "site": {}}]
    job_file = write_job(tmp / "job.yaml", clients=clients, rounds=1)

    run = start_run(job_file, tmp / "run")
    code = run.wait()

    assert code == EXIT_CONFIG
    assert "spec.storage.endpoint" in run.stderr()
    assert "Traceback" not in run.stderr()
    assert not (tmp / "run" / "sites").exists()


def test_a_bundle_that_is_not_one_fails_the_site_at_once(tmp: Path) -> None:
    bad = tmp / "bundle.json"
    bad.write_text('{"kind": "Secret"}')

    site = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "client", "--bundle", str(bad)],
        env=site_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert site.returncode == EXIT_CONFIG
    assert "is not a FederatedJoinBundle" in site.stderr
    assert "Traceback" not in site.stderr


def test_a_site_group_over_two_machines_joins_with_torchruns_rendezvous_variables(
    minio: MinioServer, tmp: Path
) -> None:
    prefix = f"runs/site-{secrets.token_hex(4)}/"
    storage = {"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": prefix}
    clients = [{"name": "a"}, {"name": "b"}, {"name": SITE, "site": {}}]
    job_file = write_job(tmp / "job.yaml", clients=clients, rounds=1, storage=storage)
    bundle_file = tmp / "run" / "sites" / f"{SITE}.json"
    port = str(free_port("127.0.0.1"))

    run = start_run(job_file, tmp / "run", env=minio.env())
    wait_for(bundle_file.exists, "the site's join bundle")
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedcore.cli",
                "client",
                "--bundle",
                str(bundle_file),
                "--nproc-per-node",
                "1",
            ],
            cwd=tmp,
            env={
                **site_env(),
                "NNODES": "2",
                "NODE_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    errors = [node.communicate(timeout=RUN_SECONDS)[1] for node in nodes]
    code = run.wait()

    assert [node.returncode for node in nodes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    assert code == 0, run.stderr()
    assert "as pod 1 of 2" in errors[1]
    body = minio.client().get_object(Bucket=minio.bucket, Key=prefix + layout.round_record_key(1))
    record = layout.RoundRecord.model_validate_json(body["Body"].read())
    assert sorted(record.participants) == ["a", "b", SITE]
