"""The site operator's pure parts: the FederatedSite model, the objects it derives from a join
bundle (the coordinator's builders, owned by the FederatedSite), and the plan that runs, restarts
and reports the site's group."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcore import credentials as fc
from fedcore import join_bundle as jb
from fedcore import layout
from fedcore import site_spec as ss
from fedcore.commit_signing import CommitSigner
from fedcore.errors import SpecError
from fedcore.store import LocalStore, ObjectStore
from fedop.builders import site as builders
from fedop.errors import SettingsError
from fedop.observed import ChildJob, Children
from fedop.reconcile import Create, DeleteJob, Replace
from fedop.settings import operator_mode
from fedop.site_reconcile import SiteObservation, SitePlan, plan
from fedop.site_store import SiteProgress, SiteStoreView
from tests.fixtures.fedjobs import final, record
from tests.unit.test_join_bundle import KEY, bundle_bytes, site_job

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SITE = builders.site_ref("hosp", "site-ns", "5173-uid")
FORGER = CommitSigner(Ed25519PrivateKey.generate())
GROUP = "hosp-s"
"""``<site>-<client>``: the Job, Service and NetworkPolicy of the site's group."""


def make_site(**spec: Any) -> ss.FederatedSiteSpec:
    body = {"bundleSecretRef": {"name": "join"}, "replicas": 2, **spec}
    obj = {"apiVersion": "fedkube.io/v1alpha1", "kind": "FederatedSite", "spec": body}
    return ss.parse_site(obj).spec


BUNDLE = jb.load_bundle(bundle_bytes())
DIGEST = builders.bundle_digest(bundle_bytes())


def observe(
    spec: ss.FederatedSiteSpec | None = None,
    *,
    status: ss.FederatedSiteStatus | None = None,
    children: Children | None = None,
    progress: SiteProgress | None = None,
    bundle: jb.JoinBundle | None = BUNDLE,
    generation: int = 1,
) -> SiteObservation:
    return SiteObservation(
        site=SITE,
        generation=generation,
        spec=spec or make_site(),
        status=status or ss.FederatedSiteStatus(),
        bundle=bundle,
        bundle_problem="" if bundle else "waiting for Secret site-ns/join (spec.bundleSecretRef)",
        digest=DIGEST if bundle else "",
        children=children or Children(),
        progress=progress or SiteProgress(),
        now=NOW,
    )


def created(p: SitePlan, kind: str) -> list[dict[str, Any]]:
    return [a.obj for a in p.actions if isinstance(a, Create) and a.obj["kind"] == kind]


def all_made(spec: ss.FederatedSiteSpec | None = None) -> Children:
    """Children as they are once the first pass's objects exist (the Job running)."""
    first = plan(observe(spec))
    objs = [a.obj for a in first.actions if isinstance(a, Create)]
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    return Children(
        jobs={GROUP: ChildJob(GROUP, active=2, ready=2)},
        services=frozenset({GROUP}),
        network_policies=frozenset({GROUP}),
        secrets=frozenset(secrets),
        secret_annotations={n: dict(o["metadata"]["annotations"]) for n, o in secrets.items()},
        configmaps={o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"},
    )


# ---- the resource ------------------------------------------------------------------------


def test_a_site_names_its_bundle_and_its_pods_with_defaults_spelled_out() -> None:
    spec = make_site()

    assert (spec.bundle_secret_ref.key, spec.procs_per_replica, spec.backoff_limit) == (
        "bundle.json",
        1,
        3,
    )


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"replicas": 0}, "spec.replicas"),
        ({"template": {"env": [{"name": "PET_NODE_RANK", "value": "1"}]}}, "PET_NODE_RANK"),
        ({"template": {"env": [{"name": "AWS_ACCESS_KEY_ID", "value": "x"}]}}, "bundle"),
        (
            {
                "gpu": True,
                "procsPerReplica": 2,
                "template": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
            },
            "disagrees with procsPerReplica=2",
        ),
        ({"bundleSecretRef": {"name": "Join!"}}, "spec.bundleSecretRef.name"),
        ({"replica": 2}, "spec.replica"),
    ],
    ids=["no-pods", "rendezvous-env", "store-env", "gpu-limit", "secret-name", "typo"],
)
def test_an_invalid_site_is_refused_naming_the_field(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError) as caught:
        make_site(**spec)

    assert words in str(caught.value)


# ---- objects derived from the bundle -----------------------------------------------------


def test_the_group_is_the_coordinators_indexed_job_owned_by_the_federatedsite() -> None:
    p = plan(observe(make_site(replicas=2, procsPerReplica=3, image="site/runtime:1")))

    (job,) = created(p, "Job")
    owner = job["metadata"]["ownerReferences"][0]
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert (owner["kind"], owner["name"], owner["uid"]) == ("FederatedSite", "hosp", "5173-uid")
    assert job["metadata"]["name"] == GROUP
    assert (job["spec"]["completionMode"], job["spec"]["parallelism"]) == ("Indexed", 2)
    assert pod["subdomain"] == GROUP
    assert env["PET_MASTER_ADDR"] == f"{GROUP}-0.{GROUP}"
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == ("2", "3")
    assert pod["containers"][0]["image"] == "site/runtime:1"
    assert pod["containers"][0]["command"][-2:] == ["--client", "s"]
    assert [s["metadata"]["name"] for s in created(p, "Service")] == [GROUP]
    assert [n["metadata"]["name"] for n in created(p, "NetworkPolicy")] == [GROUP]


def test_the_pods_job_file_is_the_bundles_with_the_sites_group_size() -> None:
    p = plan(observe(make_site(replicas=3, procsPerReplica=2, gpu=True)))

    (cm,) = created(p, "ConfigMap")
    doc = json.loads(cm["data"]["job.json"])
    mine = next(c for c in doc["spec"]["clients"] if c["name"] == "s")
    assert doc["metadata"]["uid"] == site_job().metadata.uid  # the coordinator's store prefix
    assert (mine["replicas"], mine["procsPerReplica"], mine["gpu"]) == (3, 2, True)
    assert cm["data"]["commit-public-key.pem"] == BUNDLE.commit_public_key


def test_the_store_credential_and_signing_key_come_from_the_bundle() -> None:
    p = plan(observe())

    secrets = {s["metadata"]["name"]: s for s in created(p, "Secret")}
    key = base64.b64decode(secrets["hosp-s-key"]["data"]["key"]).decode()
    creds = fc.load_credentials(
        base64.b64decode(secrets["hosp-s-store"]["data"]["credentials.json"])
    )
    assert key == KEY
    assert creds.session_token == "site-token"
    for secret in secrets.values():
        assert secret["metadata"]["annotations"][builders.ANNOTATION_BUNDLE] == DIGEST
    (job,) = created(p, "Job")
    mounted = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert mounted["fedkube-store-credentials"]["secret"]["secretName"] == "hosp-s-store"
    assert mounted["fedkube-signing-key"]["secret"]["secretName"] == "hosp-s-key"


def test_a_store_user_bundle_reaches_the_pods_as_aws_variables() -> None:
    obj = json.loads(bundle_bytes())
    obj["credentials"] = {"accessKeyId": "site-user", "secretAccessKey": "site-user-secret"}
    user = jb.load_bundle(json.dumps(obj))

    p = plan(observe(bundle=user))

    (job,) = created(p, "Job")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "hosp-s-store", "key": "AWS_SECRET_ACCESS_KEY"}
    assert "FEDKUBE_STORE_CREDENTIALS_FILE" not in env
    store = next(s for s in created(p, "Secret") if s["metadata"]["name"] == "hosp-s-store")
    assert base64.b64decode(store["data"]["AWS_ACCESS_KEY_ID"]) == b"site-user"


def test_a_replaced_bundle_rewrites_what_the_pods_mount_without_touching_the_job() -> None:
    kids = all_made()
    fresh = replace(observe(children=kids), digest="another-bundle")

    p = plan(fresh)

    rewritten = sorted(a.obj["metadata"]["name"] for a in p.actions if isinstance(a, Replace))
    assert rewritten == ["hosp-s-key", "hosp-s-store"]
    assert not [a for a in p.actions if isinstance(a, Create | DeleteJob)]


def test_a_site_name_too_long_for_its_pods_fails_with_the_fix() -> None:
    long = replace(observe(), site=builders.site_ref("h" * 60, "site-ns", "u"))

    p = plan(long)

    assert p.status.phase == "Failed"
    assert "shorten the FederatedSite's name" in p.status.message
    assert not p.actions


# ---- running and restarting the group ----------------------------------------------------


def test_without_its_bundle_a_site_waits_and_says_how_to_make_it() -> None:
    p = plan(observe(bundle=None))

    assert p.status.phase == "Pending"
    assert "waiting for Secret site-ns/join" in p.status.message
    assert not p.actions


def test_a_new_site_makes_its_objects_and_reports_whose_job_it_joins() -> None:
    p = plan(observe())

    assert p.status.phase == "Pending"
    assert (p.status.job, p.status.client, p.status.total_rounds) == ("digits", "s", 3)
    assert p.status.start_time == NOW


def test_a_failed_group_is_restarted_whole_with_an_event_once() -> None:
    kids = all_made()
    failing = replace(kids, jobs={GROUP: ChildJob(GROUP, failed=True, failure="Error: pod 1")})

    first = plan(observe(children=failing))
    again = plan(observe(children=failing, status=first.status))

    assert first.actions == (DeleteJob(GROUP, "Foreground"),)
    assert (first.status.phase, first.status.restarts) == ("Restarting", 1)
    assert [a.reason for a in first.announcements] == ["GroupRestarted"]
    assert "GroupRestarted" not in [a.reason for a in again.announcements]
    assert again.status.restarts == 1


def test_the_group_comes_back_with_its_restart_count() -> None:
    kids = all_made()
    gone = replace(kids, jobs={})

    p = plan(observe(children=gone, status=ss.FederatedSiteStatus(phase="Restarting", restarts=2)))

    (job,) = created(p, "Job")
    assert job["metadata"]["annotations"]["fedkube.io/restarts"] == "2"
    assert p.status.phase == "Restarting"


def test_past_its_budget_the_site_fails_with_the_reason() -> None:
    kids = all_made()
    failing = replace(kids, jobs={GROUP: ChildJob(GROUP, failed=True, restarts=3, failure="OOM")})

    p = plan(observe(children=failing, status=ss.FederatedSiteStatus(restarts=3)))

    assert p.status.phase == "Failed"
    assert (
        "failed 4 times (restart budget spec.backoffLimit=3); last failure: OOM" in p.status.message
    )
    assert not p.actions
    assert [a.reason for a in p.announcements] == ["BackoffLimitExceeded"]


def test_a_configuration_error_fails_the_site_without_a_restart() -> None:
    kids = all_made()
    bad = replace(kids, jobs={GROUP: ChildJob(GROUP, failed=True, config_error=True)})

    p = plan(observe(children=bad))

    assert p.status.phase == "Failed"
    assert "exit code 2" in p.status.message
    assert not p.actions


def test_a_failed_site_starts_again_when_its_spec_changes() -> None:
    failed = ss.FederatedSiteStatus(phase="Failed", restarts=3, observed_generation=1)

    same = plan(observe(status=failed, generation=1, children=Children()))
    changed = plan(observe(status=failed, generation=2, children=Children()))

    assert (same.status.phase, same.actions) == ("Failed", ())
    assert changed.status.restarts == 0
    assert created(changed, "Job")


def test_a_failed_sites_old_group_is_deleted_before_it_starts_again() -> None:
    failed = ss.FederatedSiteStatus(phase="Failed", restarts=3, observed_generation=1)
    kids = replace(all_made(), jobs={GROUP: ChildJob(GROUP, failed=True, restarts=3)})

    changed = plan(observe(status=failed, generation=2, children=kids))
    later = plan(observe(status=changed.status, generation=2, children=replace(kids, jobs={})))

    assert changed.actions == (DeleteJob(GROUP, "Foreground"),)
    assert (changed.status.phase, changed.status.restarts) == ("Restarting", 0)
    (job,) = created(later, "Job")
    assert job["metadata"]["annotations"]["fedkube.io/restarts"] == "0"


def test_a_running_group_with_new_rounds_reports_them_once() -> None:
    kids = all_made()
    progress = SiteProgress(current_round=2, last_round=2)
    before = ss.FederatedSiteStatus(phase="Running", current_round=1, last_round=1)

    p = plan(observe(children=kids, status=before, progress=progress))
    again = plan(observe(children=kids, status=p.status, progress=progress))

    assert (p.status.phase, p.status.current_round, p.status.last_round) == ("Running", 2, 2)
    assert p.status.last_update_time == NOW
    assert [a.message for a in p.announcements if a.reason == "RoundCommitted"] == [
        "round 2/3 committed by the aggregator with this site's update"
    ]
    assert not [a for a in again.announcements if a.reason == "RoundCommitted"]


def test_a_refused_commit_record_shows_as_a_false_condition() -> None:
    progress = SiteProgress(current_round=1, refused="rounds/000002/round.json: bad signature")

    p = plan(observe(children=all_made(), progress=progress))

    verified = next(c for c in p.status.conditions if c.type == "CommitsVerified")
    assert (verified.status, verified.reason) == ("False", "CommitRefused")
    assert "CommitRefused" in [a.reason for a in p.announcements]


def test_a_completed_group_succeeds() -> None:
    kids = all_made()
    done = replace(kids, jobs={GROUP: ChildJob(GROUP, complete=True)})
    progress = SiteProgress(current_round=3, last_round=3, finished=True)

    p = plan(
        observe(children=done, progress=progress, status=ss.FederatedSiteStatus(phase="Running"))
    )

    assert p.status.phase == "Succeeded"
    assert p.status.completion_time == NOW
    assert "Succeeded" in [a.reason for a in p.announcements]


def test_an_unreachable_store_is_said_in_the_status_without_stopping_the_group() -> None:
    kids = all_made()

    p = plan(observe(children=kids, progress=SiteProgress(available=False, problem="timeout")))

    assert p.status.phase == "Running"
    assert p.status.message == "object store unavailable: timeout"


def test_status_times_have_whole_seconds() -> None:
    p = plan(replace(observe(), now=NOW + timedelta(microseconds=5)))

    assert p.status.start_time == NOW


# ---- the bucket, read with the bundle's credential -----------------------------------------


def site_store(tmp_path: Path) -> tuple[SiteStoreView, list[LocalStore]]:
    opened: list[LocalStore] = []

    def opener(bundle: jb.JoinBundle, folder: Path) -> ObjectStore:
        opened.append(LocalStore(tmp_path, "p"))
        return opened[-1]

    return SiteStoreView(opener), opened


def put_rounds(store: ObjectStore, *records: layout.RoundRecord) -> None:
    for r in records:
        store.put_bytes(layout.round_record_key(r.round), r.to_json())


def test_the_site_reads_verified_rounds_and_its_own_participation(tmp_path: Path) -> None:
    view, opened = site_store(tmp_path)
    view.progress("u", BUNDLE, DIGEST, current_round=None, last_round=None)
    put_rounds(opened[0], record(0, []), record(1, ["a", "s"]), record(2, ["a"]))

    seen = view.progress("u", BUNDLE, DIGEST, current_round=None, last_round=None)
    later = view.progress("u", BUNDLE, DIGEST, current_round=2, last_round=1)

    assert (seen.current_round, seen.last_round, seen.finished) == (2, 1, False)
    assert (later.current_round, later.last_round) == (2, 1)
    assert len(opened) == 1  # the same bundle keeps its store


def test_a_forged_record_is_refused_and_not_counted(tmp_path: Path) -> None:
    view, opened = site_store(tmp_path)
    view.progress("u", BUNDLE, DIGEST, current_round=None, last_round=None)
    forged = FORGER.sign("round", record(1, ["s"]).model_copy(update={"signature": ""}))
    put_rounds(opened[0], record(0, []), forged)

    seen = view.progress("u", BUNDLE, DIGEST, current_round=None, last_round=None)

    assert (seen.current_round, seen.last_round) == (0, None)
    assert "rounds/000001/round.json" in seen.refused


def test_the_final_record_says_the_job_is_done(tmp_path: Path) -> None:
    view, opened = site_store(tmp_path)
    view.progress("u", BUNDLE, DIGEST, current_round=None, last_round=None)
    opened[0].put_bytes(layout.FINAL_RECORD_KEY, final().to_json())

    assert view.progress("u", BUNDLE, DIGEST, current_round=3, last_round=3).finished


def test_a_new_bundle_opens_a_new_store(tmp_path: Path) -> None:
    view, opened = site_store(tmp_path)

    view.progress("u", BUNDLE, DIGEST, current_round=None, last_round=None)
    view.progress("u", BUNDLE, "other", current_round=None, last_round=None)

    assert len(opened) == 2


# ---- mode --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mode"), [("", "coordinator"), ("site", "site"), (" coordinator ", "coordinator")]
)
def test_the_operator_mode_comes_from_its_variable(value: str, mode: str) -> None:
    assert operator_mode({"FEDKUBE_OPERATOR_MODE": value}) == mode


def test_an_unknown_mode_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="FEDKUBE_OPERATOR_MODE='both'"):
        operator_mode({"FEDKUBE_OPERATOR_MODE": "both"})
