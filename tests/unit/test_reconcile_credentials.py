"""The plan mints each role's store credentials once, rotates them before they expire, and
says loudly when a job runs with shared credentials."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from fedcore import layout
from fedcore.credentials import slot_writer
from fedop import reconcile, rotation, status
from fedop.builders import credentials
from fedop.observed import Children
from fedop.reconcile import plan
from fedop.settings import OperatorSettings
from tests.fixtures.fedjobs import (
    T0,
    all_children,
    created,
    make_spec,
    messages,
    minted,
    mints,
    observe,
    reasons,
    record,
    running_jobs,
    status_of,
    store,
)

SHARED = {"endpoint": "http://s3:9000", "secretRef": {"name": "s3-creds"}, "credentials": "shared"}
REFRESH = OperatorSettings().credential_refresh_seconds


def with_store_secrets(**annotations: dict[str, str]) -> Children:
    """Every child present, the named store Secrets' annotations replaced."""
    spec = make_spec()
    kids = all_children(spec, running_jobs(spec))
    stored = {**kids.secret_annotations, **annotations}
    return replace(kids, secret_annotations=stored, secrets=kids.secrets | stored.keys())


def test_first_pass_mints_every_roles_credentials_before_any_job_starts() -> None:
    result = plan(observe(make_spec(), children=Children()))

    assert mints(result) == {
        "digits-aggregator-store": 0,
        "digits-a-store": 0,
        "digits-b-store": 0,
        "digits-c-store": 0,
    }
    assert {"Secret/digits-aggregator-store", "Secret/digits-a-store"} <= created(result)


def test_fresh_credentials_are_left_alone() -> None:
    result = plan(observe(make_spec(), now=T0 + timedelta(seconds=REFRESH - 1)))

    assert mints(result) == {}


def test_credentials_older_than_the_refresh_interval_are_rotated_and_counted() -> None:
    result = plan(observe(make_spec(), now=T0 + timedelta(seconds=REFRESH)))

    assert mints(result) == {
        "digits-aggregator-store": 1,
        "digits-a-store": 1,
        "digits-b-store": 1,
        "digits-c-store": 1,
    }
    assert all(a.replace for a in result.actions if isinstance(a, rotation.MintStoreCredentials))


def test_the_rotation_count_grows_from_what_the_secret_says() -> None:
    old = minted(T0 - timedelta(hours=1), rotations=4)
    kids = with_store_secrets(**{"digits-a-store": old})

    result = plan(observe(make_spec(), children=kids))

    assert mints(result) == {"digits-a-store": 5}


def test_credentials_close_to_expiry_are_rotated_even_when_recently_minted() -> None:
    # Minted a minute ago with a lifetime shorter than the margin pods need.
    short = minted(T0 - timedelta(seconds=60), lifetime_s=200)
    kids = with_store_secrets(**{"digits-b-store": short})

    result = plan(observe(make_spec(), children=kids))

    assert mints(result) == {"digits-b-store": 1}


@pytest.mark.parametrize(
    "annotations",
    [
        pytest.param({}, id="no annotations"),
        pytest.param(
            {credentials.ANNOTATION_MINTED_AT: "yesterday", credentials.ANNOTATION_EXPIRES_AT: "x"},
            id="unreadable times",
        ),
    ],
)
def test_a_secret_whose_times_cannot_be_read_is_replaced(annotations: dict[str, str]) -> None:
    kids = with_store_secrets(**{"digits-c-store": annotations})

    result = plan(observe(make_spec(), children=kids))

    assert mints(result) == {"digits-c-store": 1}


def test_a_dropped_clients_credentials_are_left_to_expire() -> None:
    old = status_of(clients={"a": {"phase": "Dropped", "message": "dropped: ..."}})

    spec = make_spec(strategy={"minClients": 2})

    result = plan(observe(spec, status=old, now=T0 + timedelta(seconds=REFRESH)))

    assert result.status.phase == "Running"
    assert "digits-a-store" not in mints(result)
    assert "digits-b-store" in mints(result)


def test_a_finished_job_mints_nothing() -> None:
    done = status_of("Succeeded", completion_time=T0)

    result = plan(observe(make_spec(), status=done, now=T0 + timedelta(seconds=REFRESH * 3)))

    assert mints(result) == {}


def test_shared_job_mints_nothing_and_warns_once_with_a_condition() -> None:
    spec = make_spec(storage=SHARED)

    first = plan(observe(spec, children=Children()))
    second = plan(observe(spec, status=first.status))

    assert mints(first) == {}
    condition = status.condition(first.status, reconcile.SHARED_CREDENTIALS)
    assert condition is not None
    assert condition.status == "True"
    assert "scoped" in condition.message
    assert reasons(first).count(reconcile.SHARED_CREDENTIALS) == 1
    assert [a.type for a in first.announcements if a.reason == reconcile.SHARED_CREDENTIALS] == [
        "Warning"
    ]
    assert reconcile.SHARED_CREDENTIALS not in reasons(second)


def test_scoped_job_carries_no_shared_credentials_condition() -> None:
    result = plan(observe(make_spec(), children=Children()))

    assert status.condition(result.status, reconcile.SHARED_CREDENTIALS) is None


def test_store_without_sts_fails_the_job_and_a_spec_change_starts_it_again() -> None:
    refused = reconcile.refuse(
        status_of("Pending"), 1, "use shared", T0, reconcile.STORE_WITHOUT_STS
    )

    fixed = plan(observe(make_spec(storage=SHARED), status=refused.status, generation=2))

    failed = status.condition(refused.status, "Failed")
    assert failed is not None
    assert failed.reason == reconcile.STORE_WITHOUT_STS
    assert refused.status.phase == "Failed"
    assert reasons(refused) == [reconcile.STORE_WITHOUT_STS]
    assert fixed.status.phase != "Failed"


def test_rejected_update_names_the_clients_credential_when_scoped() -> None:
    bad = layout.RejectedUpdate(client="b", reason="bad-signature", detail="hmac mismatch")

    result = plan(observe(make_spec(), snapshot=store([record(0), record(1, rejected=[bad])])))

    (message,) = messages(result, "UpdateRejected")
    assert "client b's own store credential" in message
    assert "rounds/000001/updates/b.*" in message


def test_rejected_update_says_the_writer_is_unknown_when_shared() -> None:
    bad = layout.RejectedUpdate(client="b", reason="bad-signature", detail="hmac mismatch")
    spec = make_spec(storage=SHARED)

    result = plan(observe(spec, snapshot=store([record(0), record(1, rejected=[bad])])))

    (message,) = messages(result, "UpdateRejected")
    assert "unknown" in message
    assert "client b's own" not in message


def test_slot_writer_wording_is_stable() -> None:
    assert slot_writer(3, "a", scoped=True, is_client=True) == (
        "written with client a's own store credential: only it may write rounds/000003/updates/a.*"
    )


def test_slot_writer_blames_the_jobs_credential_for_a_stranger_slot() -> None:
    said = slot_writer(3, "mallory", scoped=True, is_client=False)

    assert "the job's own store credential" in said
    assert "'mallory' is not a client of the job" in said


def test_rejected_update_event_uses_the_writer_the_record_names() -> None:
    bad = layout.RejectedUpdate(
        client="b", reason="bad-signature", detail="hmac mismatch", writer="recorded writer"
    )
    spec = make_spec(storage=SHARED)

    result = plan(observe(spec, snapshot=store([record(0), record(1, rejected=[bad])])))

    (message,) = messages(result, "UpdateRejected")
    assert "hmac mismatch (recorded writer). The round went on without it." in message
