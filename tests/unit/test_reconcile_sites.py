"""A site client (spec.clients[].site): the coordinator launches nothing for it, hands it a
join bundle, waits for its updates and drops it past its timeout, with the reason."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from fedcore import spec as fs
from fedop import reconcile, sites
from fedop.builders import credentials, join, names
from fedop.observed import Children
from fedop.reconcile import plan
from tests.fixtures.fedjobs import (
    JOB,
    T0,
    all_children,
    child,
    created,
    make_spec,
    messages,
    minted,
    observe,
    record,
    status_of,
    store,
)

TIMEOUT = 600


def site_spec(**site: int) -> fs.FederatedJobSpec:
    """Clients a and b in the cluster, s a site."""
    return make_spec(
        clients=[
            {"name": "a", "replicas": 2},
            {"name": "b"},
            {"name": "s", "site": {"timeoutSeconds": TIMEOUT, **site}},
        ]
    )


def in_cluster_jobs() -> list:
    return [
        child("a", active=2, ready=2),
        child("b", active=1, ready=1),
        child("aggregator", active=1, ready=1),
    ]


def joined(kids: Children, at_minted: str | None = None) -> Children:
    """``kids`` plus the site's join bundle Secret, made from credentials minted ``at_minted``."""
    name = join.secret_name(JOB, "s")
    stamp = at_minted or minted()[credentials.ANNOTATION_MINTED_AT]
    annotations = {**kids.secret_annotations, name: {credentials.ANNOTATION_MINTED_AT: stamp}}
    return replace(kids, secrets=kids.secrets | {name}, secret_annotations=annotations)


def bundles(result: reconcile.Plan) -> list[sites.WriteJoinBundle]:
    return [a for a in result.actions if isinstance(a, sites.WriteJoinBundle)]


def test_a_site_gets_no_job_service_or_network_policy_but_keys_and_credentials() -> None:
    spec = site_spec()
    kids = replace(all_children(spec, []), services=frozenset(), network_policies=frozenset())

    result = plan(observe(spec, children=kids))
    first = plan(observe(spec, children=Children()))

    made = created(result)
    assert {"Job/digits-a", "Job/digits-b", "Service/digits-a", "NetworkPolicy/digits-a"} <= made
    assert not {"Job/digits-s", "Service/digits-s", "NetworkPolicy/digits-s"} & made
    assert "s" in {a.client for a in first.actions if isinstance(a, reconcile.CreateKeySecret)}
    assert "Secret/digits-s-store" in created(first)


def test_the_join_bundle_is_written_once_the_sites_secrets_exist() -> None:
    spec = site_spec()

    result = plan(observe(spec, jobs=in_cluster_jobs()))

    assert bundles(result) == [
        sites.WriteJoinBundle("s", minted()[credentials.ANNOTATION_MINTED_AT], replace=False)
    ]


def test_the_join_bundle_waits_for_the_sites_store_credentials() -> None:
    spec = site_spec()
    kids = all_children(spec, in_cluster_jobs())
    store_secret = credentials.secret_name(JOB, credentials.client_role("s"))
    without = {k: v for k, v in kids.secret_annotations.items() if k != store_secret}
    kids = replace(kids, secret_annotations=without, secrets=kids.secrets - {store_secret})

    result = plan(observe(spec, children=kids))

    assert bundles(result) == []


def test_a_written_bundle_is_left_alone_and_rewritten_after_a_rotation() -> None:
    spec = site_spec()
    kids = joined(all_children(spec, in_cluster_jobs()))

    unchanged = plan(observe(spec, children=kids))
    stale = plan(observe(spec, children=joined(kids, at_minted="2024-12-31T00:00:00Z")))

    assert bundles(unchanged) == []
    assert [(b.client, b.replace) for b in bundles(stale)] == [("s", True)]


def test_a_site_that_has_not_reported_is_waiting_with_its_bundle_named() -> None:
    spec = site_spec()
    kids = joined(all_children(spec, in_cluster_jobs()))

    result = plan(observe(spec, children=kids, status=status_of(start_time=T0)))

    site = result.status.clients["s"]
    assert site.phase == "Pending"
    assert site.message.startswith(sites.WAITING)
    assert "digits-s-join" in site.message


def test_a_sites_folded_update_marks_it_running_and_seen() -> None:
    spec = site_spec()
    kids = joined(all_children(spec, in_cluster_jobs()))
    now = T0 + timedelta(seconds=30)

    result = plan(
        observe(
            spec,
            children=kids,
            status=status_of(start_time=T0),
            snapshot=store([record(0, []), record(1, ["a", "b", "s"])]),
            now=now,
        )
    )

    site = result.status.clients["s"]
    assert (site.phase, site.last_round, site.last_seen) == ("Running", 1, now)
    assert result.status.clients["a"].last_seen is None


def test_a_silent_site_is_dropped_past_its_timeout_and_the_aggregator_told() -> None:
    spec = site_spec()
    kids = joined(all_children(spec, in_cluster_jobs()))
    earlier = status_of(start_time=T0, current_round=0, last_round=fs.RoundSummary(round=0))

    before = plan(
        observe(
            spec,
            children=kids,
            status=earlier,
            snapshot=store([record(0, [])], excluded={}),
            now=T0 + timedelta(seconds=TIMEOUT - 1),
        )
    )
    after = plan(
        observe(
            spec,
            children=kids,
            status=earlier,
            snapshot=store([record(0, [])], excluded={}),
            now=T0 + timedelta(seconds=TIMEOUT),
        )
    )

    assert before.status.clients["s"].phase == "Pending"
    dropped = after.status.clients["s"]
    assert dropped.phase == "Dropped"
    assert f"no update from the site for {TIMEOUT} s" in dropped.message
    assert "spec.clients[2].site.timeoutSeconds" in dropped.message
    assert "it sent no update yet" in dropped.message
    assert messages(after, "ClientDropped") == [f"client s {dropped.message}"]
    excluded = [a.clients for a in after.actions if isinstance(a, reconcile.WriteExcluded)]
    assert excluded == [{"s": dropped.message}]


def test_the_timeout_counts_from_the_sites_last_update() -> None:
    spec = site_spec()
    kids = joined(all_children(spec, in_cluster_jobs()))
    seen = T0 + timedelta(seconds=500)
    earlier = status_of(
        start_time=T0,
        current_round=1,
        last_round=fs.RoundSummary(round=1),
        clients={"s": {"phase": "Running", "last_round": 1, "last_seen": seen}},
    )

    kept = plan(
        observe(spec, children=kids, status=earlier, now=seen + timedelta(seconds=TIMEOUT - 1))
    )
    dropped = plan(
        observe(spec, children=kids, status=earlier, now=seen + timedelta(seconds=TIMEOUT))
    )

    assert kept.status.clients["s"].phase == "Running"
    assert dropped.status.clients["s"].phase == "Dropped"
    assert "its last update was round 1" in dropped.status.clients["s"].message


def test_a_suspended_job_does_not_run_a_sites_clock() -> None:
    spec = make_spec(
        clients=[{"name": "a"}, {"name": "s", "site": {"timeoutSeconds": TIMEOUT}}],
        runPolicy={"suspend": True},
    )
    kids = joined(
        all_children(spec, [child("a", suspended=True), child("aggregator", suspended=True)])
    )

    result = plan(
        observe(
            spec,
            children=kids,
            status=status_of("Suspended", start_time=T0),
            now=T0 + timedelta(days=30),
        )
    )

    assert result.status.clients["s"].phase == "Pending"


def test_a_dropped_site_gets_no_new_bundle_or_credentials() -> None:
    spec = site_spec()
    kids = joined(all_children(spec, in_cluster_jobs()), at_minted="2024-12-31T00:00:00Z")

    result = plan(
        observe(
            spec,
            children=kids,
            status=status_of(start_time=T0, clients={"s": {"phase": "Dropped", "message": "x"}}),
            now=T0 + timedelta(days=1),
        )
    )

    assert bundles(result) == []
    assert result.status.clients["s"].phase == "Dropped"
    assert names.client_job(JOB, "s") not in {
        a.obj["metadata"]["name"] for a in result.actions if isinstance(a, reconcile.Create)
    }


def store_user_spec() -> fs.FederatedJobSpec:
    return make_spec(
        clients=[{"name": "a"}, {"name": "s", "site": {"storeUser": {"name": "site-s-user"}}}]
    )


def test_a_site_with_a_store_user_gets_no_minted_credential_and_one_bundle() -> None:
    spec = store_user_spec()
    kids = all_children(spec, [child("a", active=1, ready=1), child("aggregator", active=1)])
    store_secret = credentials.secret_name(JOB, credentials.client_role("s"))
    kids = replace(
        kids,
        secret_annotations={k: v for k, v in kids.secret_annotations.items() if k != store_secret},
    )

    first = plan(observe(spec, children=kids))
    later = plan(
        observe(spec, children=joined(kids, at_minted=sites.STORE_USER), now=T0 + timedelta(days=2))
    )

    assert "Secret/digits-s-store" not in created(first)
    assert bundles(first) == [sites.WriteJoinBundle("s", sites.STORE_USER)]
    assert bundles(later) == []
    assert not any(getattr(a, "role", None) == credentials.client_role("s") for a in later.actions)
