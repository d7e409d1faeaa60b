"""The batch Jobs of a FederatedJob: one Indexed Job per client group and the aggregator's.

A client group is one DDP world: if any member fails the rest cannot go on, so its Job has
``backoffLimit: 0`` and the operator restarts the whole group (delete, then recreate under the
same name) within the job's restart budget. The restart count rides along as an annotation.

The aggregator is one process that resumes from the store, so its own Job retries it
(``backoffLimit`` = ``spec.runPolicy.backoffLimit``), replacing a pod only after the old one
is gone (``podReplacementPolicy: Failed``) so two aggregators never overlap.

Both fail at once, without a retry, when a pod exits with ``EXIT_CONFIG`` (the job or its task
is wrong: the same pod would fail the same way again): the ``podFailurePolicy`` rule gives the
Job a ``Failed`` condition with reason ``PodFailurePolicy``, which the operator reports as a
configuration error instead of spending the restart budget on it.
"""

from __future__ import annotations

from typing import Any

from fedcore import spec as fs
from fedcore.exitcodes import EXIT_CONFIG
from fedop.builders import names, pods
from fedop.settings import OperatorSettings

CONFIG_ERROR_REASON = "PodFailurePolicy"
"""The reason of a Job's ``Failed`` condition set by the rule of ``fail_on_config_error``."""


def fail_on_config_error(container: str) -> dict[str, Any]:
    """``podFailurePolicy``: a pod whose ``container`` exits ``EXIT_CONFIG`` fails the Job."""
    rule = {"containerName": container, "operator": "In", "values": [EXIT_CONFIG]}
    return {"rules": [{"action": "FailJob", "onExitCodes": rule}]}


def client_job(
    job: names.JobRef,
    spec: fs.FederatedJobSpec,
    client: fs.ClientSpec,
    settings: OperatorSettings,
    *,
    restarts: int = 0,
    suspend: bool = False,
) -> dict[str, Any]:
    meta = names.metadata(job, names.client_job(job, client.name), "client", client.name)
    meta["annotations"] = {names.ANNOTATION_RESTARTS: str(restarts)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": client.replicas,
            "parallelism": client.replicas,
            "backoffLimit": 0,
            "podFailurePolicy": fail_on_config_error(pods.CLIENT_CONTAINER),
            "suspend": suspend,
            "template": pods.client_pod_template(job, spec, client, settings),
        },
    }


def aggregator_job(
    job: names.JobRef,
    spec: fs.FederatedJobSpec,
    settings: OperatorSettings,
    *,
    suspend: bool = False,
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": names.metadata(job, names.aggregator_job(job), "aggregator"),
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": spec.run_policy.backoff_limit,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": fail_on_config_error(pods.AGGREGATOR_CONTAINER),
            "suspend": suspend,
            "template": pods.aggregator_pod_template(job, spec, settings),
        },
    }
