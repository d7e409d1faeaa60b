"""Deleting a running FederatedJob removes everything it made, pods included."""

from __future__ import annotations

import pytest

from tests.fixtures.operator import FedJobs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_deleting_a_running_job_leaves_no_pods_jobs_services_or_secrets(fedjobs: FedJobs) -> None:
    fedjobs.apply(fedjobs.example(name="doomed", rounds=200))
    fedjobs.wait_for_round("doomed", 1)
    owned = fedjobs.owned("doomed")
    assert len(owned["pods"]) == 7  # 3 clients x 2 pods + the aggregator
    # 3 clients' keys, the commit signing key, 4 roles' store credentials
    assert len(owned["secrets"]) == 8
    assert len(owned["networkpolicies"]) == 4  # 3 clients + the aggregator

    fedjobs.kubectl("delete", "fj", "doomed", "--wait=true", "--timeout=60s")

    fedjobs.wait_until_nothing_owned("doomed")
    assert fedjobs.get("doomed") is None
