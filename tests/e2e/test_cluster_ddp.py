"""The shape fedkube runs a client in: an Indexed Job plus a headless Service, with torch.

Two pods form a 2-rank ``torch.distributed`` gloo group; rank 1 finds rank 0 by its DNS name
``<job>-0.<service>`` and both all-reduce a tensor.
"""

from __future__ import annotations

import pytest

from tests.cluster.handle import HOST_IMAGE, ClusterHandle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RANK_SCRIPT = """
import datetime, os, socket, time
import torch
import torch.distributed as dist

rank = int(os.environ["JOB_COMPLETION_INDEX"])
master = os.environ["MASTER_ADDR"]
# As in a cluster, a peer's DNS name resolves once that pod has an address: wait for it.
for _ in range(600):
    try:
        master_ip = socket.gethostbyname(master)
        break
    except socket.gaierror:
        time.sleep(0.1)
print(f"rank {rank} on {socket.gethostname()} found {master} at {master_ip}", flush=True)
dist.init_process_group(
    "gloo", init_method=f"tcp://{master}:{os.environ['MASTER_PORT']}", rank=rank,
    world_size=int(os.environ["WORLD_SIZE"]), timeout=datetime.timedelta(seconds=120),
)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank {rank} all-reduce sum {value.item():g}", flush=True)
dist.destroy_process_group()
"""


def test_indexed_job_runs_a_two_rank_gloo_all_reduce_found_by_dns_name(
    cluster: ClusterHandle, namespace: str
) -> None:
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ddp"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {"job-name": "ddp"}, "ports": [{"port": 29500}]},
    }  # fmt: skip
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ddp"},
        "spec": {
            "completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
            "template": {"spec": {
                "subdomain": "ddp", "restartPolicy": "Never",
                "containers": [{
                    "name": "rank", "image": HOST_IMAGE,
                    "command": ["python", "-c", RANK_SCRIPT],
                    "env": [
                        {"name": "MASTER_ADDR", "value": "ddp-0.ddp"},
                        {"name": "MASTER_PORT", "value": "29500"},
                        {"name": "WORLD_SIZE", "value": "2"},
                    ],
                }],
            }},
        },
    }  # fmt: skip

    cluster.apply(namespace, service, job)

    def finished() -> str | None:
        status = cluster.batch.read_namespaced_job_status("ddp", namespace).status
        done = [c.type for c in (status.conditions or []) if c.status == "True"] if status else []
        return next((c for c in done if c in ("Complete", "Failed")), None)

    outcome = cluster.wait_for(finished, 240, "the ddp Job to finish")
    pods = {
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
        for p in cluster.pods(namespace, "job-name=ddp")
    }
    logs = {i: cluster.pod_logs(namespace, p["metadata"]["name"]) for i, p in pods.items()}
    assert outcome == "Complete", logs
    rank0_ip = pods["0"]["status"]["podIP"]
    assert f"rank 1 on ddp-1 found ddp-0.ddp at {rank0_ip}" in logs["1"]
    assert "rank 0 all-reduce sum 3" in logs["0"]
    assert "rank 1 all-reduce sum 3" in logs["1"]
