"""Reading the world: Job status into views, status round trips, merge patches, settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from fedcore import spec as fs
from fedop import status
from fedop.apply import _refusals
from fedop.errors import ApiError, ChildRefused, SettingsError
from fedop.observed import child_job, children
from fedop.settings import OperatorSettings
from tests.fixtures.fedjobs import JOB, T0


def job_obj(name: str = "digits-a", owner: str = JOB.uid, **state: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "ownerReferences": [{"uid": owner, "controller": True}],
            "annotations": {"fedkube.io/restarts": state.pop("restarts", "0")},
            **(
                {"deletionTimestamp": "2025-01-01T00:00:00Z"}
                if state.pop("deleting", False)
                else {}
            ),
        },
        "spec": {"suspend": state.pop("suspend", False)},
        "status": state,
    }


@pytest.mark.parametrize(
    ("obj", "expect"),
    [
        pytest.param(
            job_obj(active=2, ready=2),
            {"running": True, "failed": False},
            id="a Job with ready pods is running",
        ),
        pytest.param(
            job_obj(active=2),
            {"running": True},
            id="a Job whose controller reports no ready count runs when active",
        ),
        pytest.param(
            job_obj(active=2, ready=0),
            {"running": False},
            id="a Job with only unready pods is not running yet",
        ),
        pytest.param(
            job_obj(
                conditions=[
                    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}
                ]
            ),
            {"failed": True, "failure": "BackoffLimitExceeded"},
            id="a Job about to fail counts as failed",
        ),
        pytest.param(
            job_obj(
                conditions=[
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "PodFailurePolicy",
                        "message": "Container client for pod ns/digits-a-0-x failed with exit "
                        "code 2 matching FailJob rule at index 0",
                    }
                ]
            ),
            {"failed": True, "config_error": True},
            id="a Job failed by the exit-code rule is a configuration error",
        ),
        pytest.param(
            job_obj(
                conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
            ),
            {"failed": True, "config_error": False},
            id="a Job failed past its backoff is no configuration error",
        ),
        pytest.param(
            job_obj(conditions=[{"type": "Complete", "status": "True"}]),
            {"complete": True, "failed": False, "finished": True},
            id="a complete Job is finished",
        ),
        pytest.param(
            job_obj(deleting=True, active=1, ready=1),
            {"terminating": True, "running": False},
            id="a Job being deleted is terminating",
        ),
        pytest.param(
            job_obj(restarts="2"), {"restarts": 2}, id="the restart annotation is read back"
        ),
        pytest.param(
            job_obj(restarts="junk"),
            {"restarts": 0},
            id="a mangled restart annotation counts as none",
        ),
    ],
)
def test_job_views(obj: dict[str, Any], expect: dict[str, Any]) -> None:
    view = child_job(obj)

    assert {k: getattr(view, k) for k in expect} == expect


def test_children_owned_by_another_uid_are_reported_as_foreign() -> None:
    kids = children(JOB.uid, [job_obj(), job_obj("digits-b", owner="old-uid")], [], [], [])

    assert list(kids.jobs) == ["digits-a"]
    assert kids.foreign == ("Job/digits-b",)


def meta(name: str, owner: str = JOB.uid, **annotations: str) -> dict[str, Any]:
    """A metadata-only list item, as Secrets and NetworkPolicies are listed."""
    return {
        "metadata": {
            "name": name,
            "ownerReferences": [{"uid": owner, "controller": True}],
            "annotations": annotations,
        }
    }


def test_the_commit_public_key_is_read_from_the_key_secrets_annotation() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
    secrets = [
        meta("digits-commit-key", **{"fedkube.io/commit-public-key": pem}),
        meta("digits-a-key"),
        meta("other-commit-key", owner="old-uid", **{"fedkube.io/commit-public-key": "x"}),
    ]

    kids = children(JOB.uid, [], [], secrets, [])

    assert kids.commit_public_keys == {"digits-commit-key": pem}
    assert kids.secrets == {"digits-commit-key", "digits-a-key"}


def test_network_policies_are_children_too() -> None:
    policies = [meta("digits-aggregator"), meta("digits-a"), meta("digits-b", owner="old-uid")]

    kids = children(JOB.uid, [], [], [], [], policies)

    assert kids.network_policies == {"digits-aggregator", "digits-a"}
    assert kids.foreign == ("NetworkPolicy/digits-b",)


def test_status_round_trips_through_the_wire_form() -> None:
    s = fs.FederatedJobStatus(
        phase="Running", current_round=2, start_time=T0, clients={"a": fs.ClientStatus(restarts=1)}
    )

    assert status.parse_status(status.to_wire(s)) == s


def test_status_fields_this_version_does_not_know_are_ignored() -> None:
    parsed = status.parse_status({"phase": "Running", "kopf": {"progress": {}}})

    assert parsed.phase == "Running"


def test_merge_patch_sends_only_changes_and_deletes_removed_keys() -> None:
    old = {
        "phase": "Running",
        "clients": {"a": {"restarts": 0}, "b": {"restarts": 0}},
        "history": [1],
    }
    new = {"phase": "Running", "clients": {"a": {"restarts": 1}}, "history": [1, 2]}

    assert status.merge_patch(old, new) == {
        "clients": {"a": {"restarts": 1}, "b": None},
        "history": [1, 2],
    }
    assert status.merge_patch(new, new) == {}


def test_condition_transition_time_moves_only_when_its_status_flips() -> None:
    first = status.set_condition([], "Running", "True", "Running", "", now=T0, generation=1)
    same = status.set_condition(
        first, "Running", "True", "Running", "x", now=T0 + timedelta(seconds=5), generation=1
    )
    flipped = status.set_condition(
        same, "Running", "False", "Failed", "", now=T0 + timedelta(seconds=9), generation=1
    )

    assert same[0].last_transition_time == T0
    assert flipped[0].last_transition_time == T0 + timedelta(seconds=9)


def test_short_refresh_interval_with_the_shortest_lifetime_is_accepted() -> None:
    settings = OperatorSettings.from_env(
        {"FEDKUBE_CREDENTIAL_LIFETIME_SECONDS": "900", "FEDKUBE_CREDENTIAL_REFRESH_SECONDS": "15"}
    )

    assert (settings.credential_lifetime_seconds, settings.credential_refresh_seconds) == (900, 15)


def test_settings_come_from_fedkube_variables() -> None:
    settings = OperatorSettings.from_env(
        {"FEDKUBE_RESYNC_SECONDS": "0.5", "FEDKUBE_RUNTIME_IMAGE": "reg/rt:1"}
    )

    assert settings.resync_seconds == 0.5
    assert settings.runtime_image == "reg/rt:1"
    assert settings.workers == OperatorSettings().workers


@pytest.mark.parametrize(
    ("env", "words"),
    [
        pytest.param(
            {"FEDKUBE_WORKERS": "many"},
            "FEDKUBE_WORKERS='many' is not a valid int",
            id="a non-number is refused naming the variable",
        ),
        pytest.param(
            {"FEDKUBE_RESYNC_SECONDS": "0"}, "must be positive", id="a zero interval is refused"
        ),
        pytest.param(
            {"FEDKUBE_POD_USER_ID": "0"}, "non-root", id="pods may not be configured to run as root"
        ),
        pytest.param(
            {"FEDKUBE_CREDENTIAL_LIFETIME_SECONDS": "600"},
            "between 900 and 43200",
            id="a lifetime STS would refuse is refused",
        ),
        pytest.param(
            {"FEDKUBE_CREDENTIAL_REFRESH_SECONDS": "3500"},
            "at most 3300",
            id="a refresh too close to expiry is refused",
        ),
        pytest.param(
            {"FEDKUBE_CREDENTIAL_REFRESH_SECONDS": "0"},
            "must be positive",
            id="a zero refresh interval is refused",
        ),
        pytest.param(
            {"FEDKUBE_METRICS_SCRAPE_NAMESPACE": "Monitoring"},
            "not a namespace name",
            id="a scrape namespace that cannot exist is refused",
        ),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        OperatorSettings.from_env(env)


@pytest.mark.parametrize(
    ("code", "transient"),
    [(0, True), (409, True), (429, True), (503, True), (403, False), (422, False)],
)
def test_api_errors_know_whether_a_retry_may_help(code: int, transient: bool) -> None:
    assert ApiError(code, "", "x").transient is transient


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        pytest.param(422, True, id="an invalid child is the spec's fault"),
        pytest.param(400, True, id="a strictly refused field is the spec's fault"),
        pytest.param(503, False, id="a busy API server is not"),
    ],
)
def test_api_refusals_of_children_are_told_apart(code: int, refused: bool) -> None:
    def create() -> None:
        raise ApiError(code, "Invalid", "spec.template.spec.containers[0].resources: bad")

    with pytest.raises(ApiError) as caught:
        _refusals(create)()

    assert isinstance(caught.value, ChildRefused) is refused
    assert "resources" in str(caught.value)
