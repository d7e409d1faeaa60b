"""The join bundle: the operator writes it from the site's Secrets, a site reads it back and
runs from it alone; anything malformed or not the job's is refused, naming the field."""

from __future__ import annotations

import base64
import json
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from fedcore import credentials as fc
from fedcore import join_bundle as jb
from fedcore import site
from fedcore import spec as fs
from fedcore.errors import BundleError, CredentialsError
from fedcore.exitcodes import EXIT_CONFIG, exit_code_for
from fedop import reconcile, sites
from fedop.apply import Executor, Target
from fedop.builders import configmap, credentials, join, names, secrets
from fedop.kube import Kube
from fedop.store_view import StoreView
from tests.fixtures.fedjobs import COMMIT_PUBLIC_PEM, JOB, make_spec

CREDS = fc.ScopedCredentials(
    "AKIDSITE", "site-secret", "site-token", datetime(2030, 1, 1, tzinfo=UTC)
)
KEY = "ab" * 32


def site_job() -> fs.FederatedJob:
    spec = make_spec(clients=[{"name": "a"}, {"name": "s", "site": {}, "procsPerReplica": 2}])
    meta = fs.ObjectMeta(name=JOB.name, namespace=JOB.namespace, uid=JOB.uid)
    return fs.FederatedJob(metadata=meta, spec=spec)


def bundle_bytes(client: str = "s") -> bytes:
    job = site_job()
    document = configmap.job_document(JOB, job.spec)
    return jb.dump_bundle(document, client, fc.dump_credentials(CREDS), KEY, COMMIT_PUBLIC_PEM)


def edited(**changes: Any) -> bytes:
    obj = json.loads(bundle_bytes())
    obj.update(changes)
    return json.dumps(obj).encode()


def test_a_bundle_round_trips_with_the_jobs_store_and_the_sites_secrets() -> None:
    bundle = jb.load_bundle(bundle_bytes())

    assert (bundle.client, bundle.job.name, bundle.signing_key) == ("s", "digits", KEY)
    assert bundle.credentials == CREDS
    assert json.loads(bundle_bytes())["store"] == {
        "endpoint": "http://minio.minio:9000",
        "bucket": "fedkube",
        "prefix": "fedkube/team-a/digits-0f1e2d3c/",
        "region": "us-east-1",
    }
    assert "site-secret" not in repr(bundle)


def test_a_bundle_for_a_client_the_coordinator_runs_is_refused() -> None:
    with pytest.raises(BundleError, match="client 'a' is not a site of job 'digits'"):
        bundle_bytes("a")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"{not json", "is not JSON"),
        (b"[]", "is not a FederatedJoinBundle"),
        (edited(kind="Secret"), "is not a FederatedJoinBundle"),
        (edited(extra=1), "unknown field(s) extra"),
        (edited(apiVersion="fedkube.io/v2"), "apiVersion 'fedkube.io/v2'"),
        (edited(client="nobody"), "no client named 'nobody'"),
        (edited(store={"bucket": "other"}), "field 'store' disagrees"),
        (edited(signingKey=""), "field 'signingKey' must be a non-empty string"),
        (edited(commitPublicKey="nope"), "field 'commitPublicKey' must be the PEM"),
        (edited(credentials={"accessKeyId": "x"}), "field 'secretAccessKey' is missing"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_malformed_bundle_is_refused_naming_what_is_wrong(data: bytes, words: str) -> None:
    with pytest.raises(BundleError) as caught:
        jb.load_bundle(data, source="site.json")

    assert words in str(caught.value)
    assert str(caught.value).startswith("site.json")
    assert "site-secret" not in str(caught.value)
    assert exit_code_for(caught.value) == EXIT_CONFIG


def test_a_bundle_without_a_field_names_it() -> None:
    obj = json.loads(bundle_bytes())
    del obj["signingKey"]

    with pytest.raises(BundleError, match="missing field\\(s\\) signingKey"):
        jb.load_bundle(json.dumps(obj))


def test_the_sites_job_file_carries_the_sites_own_group_size() -> None:
    bundle = jb.load_bundle(bundle_bytes())
    group = site.SiteGroup.from_environ({"NNODES": "3", "NODE_RANK": "1", "MASTER_ADDR": "n0",
                                         "MASTER_PORT": "29500"}, 4)  # fmt: skip

    doc = site.site_job_document(bundle, group)

    (own,) = [c for c in doc["spec"]["clients"] if c["name"] == "s"]
    assert (own["replicas"], own["procsPerReplica"]) == (3, 4)
    assert fs.parse_job(doc).spec.client("a") == bundle.job.spec.client("a")
    assert group.pet_environ() == {
        "PET_NNODES": "3", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "n0", "PET_MASTER_PORT": "29500",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("environ", "nproc", "words"),
    [
        ({}, 0, "--nproc-per-node=0 must be at least 1"),
        ({"NNODES": "two"}, 1, "NNODES='two' must be an integer of at least 1"),
        (
            {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            1,
            "NODE_RANK=2 is not below NNODES=2",
        ),
        ({"NNODES": "2", "NODE_RANK": "1"}, 1, "needs MASTER_ADDR and MASTER_PORT"),
    ],
)
def test_a_bad_rendezvous_environment_is_refused(
    environ: dict[str, str], nproc: int, words: str
) -> None:
    with pytest.raises(BundleError, match=words.replace("(", "\\(")):
        site.SiteGroup.from_environ(environ, nproc)


def test_a_one_machine_group_needs_no_rendezvous_variables() -> None:
    group = site.SiteGroup.from_environ({}, 2)

    assert group.pet_environ() == {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
    }


def test_the_bundles_files_are_private_and_named_as_in_a_pod(tmp_path: Path) -> None:
    bundle = jb.load_bundle(bundle_bytes())

    job_file, env = site.materialize(bundle, site.SiteGroup.from_environ({}, 2), tmp_path)

    assert fs.load_job(job_file).spec.client("s").procs_per_replica == 2
    assert Path(env["FEDKUBE_SIGNING_KEY_FILE"]).read_text() == KEY
    assert Path(env["FEDKUBE_COMMIT_PUBLIC_KEY_FILE"]).read_text() == COMMIT_PUBLIC_PEM
    assert fc.read_credentials_file(Path(env[fc.CREDENTIALS_FILE_ENV])) == CREDS
    for secret in (env["FEDKUBE_SIGNING_KEY_FILE"], env[fc.CREDENTIALS_FILE_ENV]):
        assert stat.S_IMODE(Path(secret).stat().st_mode) == 0o600


def test_export_writes_the_secrets_bundle_privately(tmp_path: Path) -> None:
    secret = {"data": {jb.SECRET_KEY: base64.b64encode(bundle_bytes()).decode()}}
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(
        f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat <<'EOF'\n{json.dumps(secret)}\nEOF\n"
    )
    kubectl.chmod(0o755)
    out = tmp_path / "site.json"

    bundle = site.export_bundle(
        "digits",
        "s",
        out,
        site.KubectlTarget(namespace="team-a", context="hub"),
        kubectl=str(kubectl),
    )

    assert bundle.client == "s"
    assert out.read_bytes() == bundle_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert (tmp_path / "argv").read_text().split() == [
        "--context", "hub", "--namespace", "team-a", "get", "secret", "digits-s-join", "-o", "json",
    ]  # fmt: skip


def test_export_of_a_missing_secret_says_what_to_check(tmp_path: Path) -> None:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(
        "#!/bin/sh\necho 'Error from server (NotFound): secrets \"x\" not found' >&2\nexit 1\n"
    )
    kubectl.chmod(0o755)

    with pytest.raises(BundleError, match="is 's' a site client of FederatedJob 'digits'"):
        site.export_bundle("digits", "s", tmp_path / "o.json", kubectl=str(kubectl))
    assert not (tmp_path / "o.json").exists()


class SecretKube:
    """Reads the site's Secrets; records what is written."""

    def __init__(self, data: dict[str, dict[str, str]]) -> None:
        self.data = data
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.data.get(name)

    def create(self, obj: dict[str, Any], owner: object) -> dict[str, Any]:
        self.calls.append(("create", obj, None))
        return obj

    def merge_patch(self, obj: dict[str, Any], patch: dict[str, Any]) -> None:
        self.calls.append(("patch", obj, patch))

    def patch_status(self, job: object, patch: object) -> None:
        return None

    def post_event(self, event: object) -> None:
        return None


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_executor_gathers_the_sites_secrets_into_its_join_secret() -> None:
    job = site_job()
    kube = SecretKube(
        {
            credentials.secret_name(JOB, credentials.client_role("s")): {
                credentials.CREDENTIALS_KEY: b64(fc.dump_credentials(CREDS).decode())
            },
            names.key_secret(JOB, "s"): {secrets.KEY: b64(KEY)},
            names.commit_key_secret(JOB): {secrets.COMMIT_PUBLIC_KEY: b64(COMMIT_PUBLIC_PEM)},
        }
    )
    executor = Executor(cast(Kube, kube), StoreView(), ThreadPoolExecutor(max_workers=1))
    target = Target(job=JOB, parsed=job, credentials=None, old_status=fs.FederatedJobStatus())
    action = sites.WriteJoinBundle("s", "2025-01-01T12:00:00Z")

    executor.apply(
        target, reconcile.Plan(status=fs.FederatedJobStatus(), actions=(action,)), datetime.now(UTC)
    )

    ((verb, obj, _),) = kube.calls
    assert verb == "create"
    assert obj["metadata"]["name"] == "digits-s-join"
    assert obj["metadata"]["annotations"] == {
        credentials.ANNOTATION_MINTED_AT: "2025-01-01T12:00:00Z"
    }
    assert obj["metadata"]["labels"][names.LABEL_CLIENT] == "s"
    written = jb.load_bundle(base64.b64decode(obj["data"][join.BUNDLE_KEY]))
    assert (written.credentials, written.signing_key) == (CREDS, KEY)
    assert written.commit_public_key == COMMIT_PUBLIC_PEM


def test_a_bundle_may_carry_a_long_lived_store_user_which_signs_as_aws_variables(
    tmp_path: Path,
) -> None:
    document = configmap.job_document(JOB, site_job().spec)
    keys = jb.StoreUserKeys("AKIDUSER", "user-secret")
    data = jb.dump_bundle(document, "s", keys.to_json(), KEY, COMMIT_PUBLIC_PEM)

    bundle = jb.load_bundle(data)
    _, env = site.materialize(bundle, site.SiteGroup.from_environ({}, 1), tmp_path)

    assert bundle.credentials == keys
    assert "user-secret" not in repr(bundle.credentials)
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("AKIDUSER", "user-secret")
    assert fc.CREDENTIALS_FILE_ENV not in env


def test_a_store_user_with_an_empty_key_is_refused() -> None:
    with pytest.raises(BundleError, match="must be non-empty strings"):
        jb.load_bundle(edited(credentials={"accessKeyId": "", "secretAccessKey": "x"}))


def test_the_site_policy_is_the_scoped_clients_session_policy() -> None:
    job = site_job()

    policy = site.site_policy(job, "s")

    assert policy == fc.session_policy(
        "fedkube", "fedkube/team-a/digits-0f1e2d3c/", fc.Role.for_client("s")
    )
    with pytest.raises(BundleError, match="client 'a' of job 'digits' is not a site"):
        site.site_policy(job, "a")


def test_the_executor_puts_the_sites_store_user_keys_into_its_bundle() -> None:
    spec = make_spec(
        clients=[{"name": "a"}, {"name": "s", "site": {"storeUser": {"name": "s-user"}}}]
    )
    job = fs.FederatedJob(metadata=site_job().metadata, spec=spec)
    kube = SecretKube(
        {
            "s-user": {"AWS_ACCESS_KEY_ID": b64("AKIDUSER"), "AWS_SECRET_ACCESS_KEY": b64("pw")},
            names.key_secret(JOB, "s"): {secrets.KEY: b64(KEY)},
            names.commit_key_secret(JOB): {secrets.COMMIT_PUBLIC_KEY: b64(COMMIT_PUBLIC_PEM)},
        }
    )
    executor = Executor(cast(Kube, kube), StoreView(), ThreadPoolExecutor(max_workers=1))
    target = Target(job=JOB, parsed=job, credentials=None, old_status=fs.FederatedJobStatus())
    action = sites.WriteJoinBundle("s", sites.STORE_USER)

    executor.apply(
        target, reconcile.Plan(status=fs.FederatedJobStatus(), actions=(action,)), datetime.now(UTC)
    )

    ((_, obj, _),) = kube.calls
    written = jb.load_bundle(base64.b64decode(obj["data"][join.BUNDLE_KEY]))
    assert written.credentials == jb.StoreUserKeys("AKIDUSER", "pw")


def test_a_missing_store_user_secret_is_a_credentials_error_naming_it() -> None:
    spec = make_spec(
        clients=[{"name": "a"}, {"name": "s", "site": {"storeUser": {"name": "s-user"}}}]
    )
    job = fs.FederatedJob(metadata=site_job().metadata, spec=spec)
    kube = SecretKube(
        {
            names.key_secret(JOB, "s"): {secrets.KEY: b64(KEY)},
            names.commit_key_secret(JOB): {secrets.COMMIT_PUBLIC_KEY: b64(COMMIT_PUBLIC_PEM)},
        }
    )
    executor = Executor(cast(Kube, kube), StoreView(), ThreadPoolExecutor(max_workers=1))
    target = Target(job=JOB, parsed=job, credentials=None, old_status=fs.FederatedJobStatus())
    action = sites.WriteJoinBundle("s", sites.STORE_USER)

    with pytest.raises(
        CredentialsError, match="Secret s-user in namespace team-a has no 'AWS_ACCESS_KEY_ID'"
    ):
        executor.apply(
            target,
            reconcile.Plan(status=fs.FederatedJobStatus(), actions=(action,)),
            datetime.now(UTC),
        )
    assert kube.calls == []
