"""Operator reconcile time for one FederatedJob of 100 clients x 4 pods, on a real API server.

Why it exists: the operator makes 3 objects per client plus 3 (a Secret, a Service and an
Indexed Job each, the job file, the commit key Secret and the aggregator), so a 100-client
job is 303 creates (NetworkPolicies, one per client and one for the aggregator, come on top
and are not counted), and every reconcile pass lists them all. This measures, against the
test control plane (tests/cluster: etcd, kube-apiserver, controller-manager, scheduler;
started here unless ``--kubeconfig`` names a running cluster) with a local MinIO as the
job's store:

* ``first pass``: from creating the FederatedJob to all 303 children created, the operator's
  own passes (``fedop.handlers.sync_job``) run in this process: two, since the Jobs wait for
  the commit key Secret the first pass makes;
* ``steady pass``: one later pass (read the job, list its children, probe the store, decide,
  write nothing): the median and p95 of ``--passes`` passes;
* ``live operator``: ``kopf run -m fedop`` as a separate process, from ``kubectl apply`` to
  all children present (watch latency and queueing included), polled every 50 ms;
* baselines measured in the same run: the same 303 objects created one by one with the
  plain ``kubernetes`` client, and one read of the job plus its four child lists with it.

Pods never run: the job is suspended (Kueue semantics), so its Jobs start no pods, and the
figures are the operator's and the API server's alone. Results: a table and
``bench/results/operator_reconcile.json``.

Run ``python bench/operator_reconcile.py`` (needs ``make binaries``; ``make bench-operator``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]  # the cluster and MinIO managers live in tests/

from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402

from fedcore import spec as fs  # noqa: E402
from fedcore.commit_signing import generate_key_pair  # noqa: E402
from fedcore.signing import generate_key  # noqa: E402
from fedop import handlers  # noqa: E402
from fedop.builders import configmap, jobs, names, secrets, services  # noqa: E402
from fedop.kube import Kube  # noqa: E402
from fedop.settings import OperatorSettings  # noqa: E402
from fedop.store_view import StoreView  # noqa: E402
from tests.cluster import ClusterConfig, start  # noqa: E402
from tests.cluster.config import NodeSpec  # noqa: E402
from tests.fixtures.minio import MinioServer, minio_binary  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
CRD = REPO / "crds" / "federatedjob.yaml"
Obj = dict[str, Any]


def federated_job(name: str, clients: int, replicas: int, endpoint: str) -> Obj:
    return {
        "apiVersion": f"{fs.API_GROUP}/{fs.API_VERSION}",
        "kind": fs.KIND,
        "metadata": {"name": name},
        "spec": {
            "rounds": 10,
            "task": {"entrypoint": "fedcore.tasks.digits:task"},
            "storage": {"endpoint": endpoint, "secretRef": {"name": "s3-creds"}},
            "clients": [{"name": f"c{i:03d}", "replicas": replicas} for i in range(clients)],
            "runPolicy": {"suspend": True},
        },
    }


def timed(action: Callable[[], object]) -> float:
    start_ = time.perf_counter()
    action()
    return time.perf_counter() - start_


@contextmanager
def cluster_kubeconfig(given: str | None, work: Path) -> Iterator[tuple[Path, Path]]:
    """(kubeconfig, kubectl) of the given cluster, or of a test cluster started for the run."""
    if given:
        yield Path(given), Path(os.environ.get("KUBECTL", "kubectl"))
        return
    print("starting the test control plane ...", file=sys.stderr)
    started = start(
        ClusterConfig(
            state_dir=work / "cluster", nodes=(NodeSpec("node-a"),), parent_pid=os.getpid()
        )
    )
    try:
        yield started.info.kubeconfig, started.info.kubectl
    finally:
        started.stop()


class Bench:
    def __init__(self, kubeconfig: Path, kubectl: Path, minio: MinioServer, args: Any) -> None:
        self.kubeconfig, self.kubectl, self.minio, self.args = kubeconfig, kubectl, minio, args
        os.environ["KUBECONFIG"] = str(kubeconfig)
        self.api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        self.core = k8s.CoreV1Api(self.api)
        self.batch = k8s.BatchV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)

    def kubectl_run(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
            capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
        return result.stdout

    def namespace(self, name: str) -> str:
        self.kubectl_run("create", "namespace", name)
        self.kubectl_run(
            "create", "secret", "generic", "s3-creds", "-n", name,
            f"--from-literal=AWS_ACCESS_KEY_ID={self.minio.access_key}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={self.minio.secret_key}")  # fmt: skip
        return name

    def create_fj(self, namespace: str, name: str, clients: int | None = None) -> Obj:
        clients = self.args.clients if clients is None else clients
        body = federated_job(name, clients, self.args.replicas, self.minio.endpoint)
        created: Obj = self.custom.create_namespaced_custom_object(
            fs.API_GROUP, fs.API_VERSION, namespace, fs.PLURAL, body
        )
        return created

    def count_children(self, namespace: str, name: str) -> int:
        selector = f"{names.LABEL_JOB}={name}"
        return sum(
            len(items(namespace, label_selector=selector).items)
            for items in (
                self.batch.list_namespaced_job,
                self.core.list_namespaced_service,
                self.core.list_namespaced_secret,
                self.core.list_namespaced_config_map,
            )
        )

    # -- the operator's pass, in this process ---------------------------------------------

    def runtime(self) -> handlers.Runtime:
        """What ``kopf run -m fedop`` builds at start-up, minus the watches."""
        settings = OperatorSettings(workers=1, kubeconfig=str(self.kubeconfig))
        return handlers.Runtime(
            settings=settings,
            kube=Kube.from_environment(settings),
            store=StoreView(),
            pool=ThreadPoolExecutor(settings.api_concurrency),
        )

    def first_pass(self, runtime: handlers.Runtime, namespace: str, clients: int) -> float:
        """Seconds from creating the FederatedJob to all its children created."""

        def apply_and_pass() -> None:
            self.create_fj(namespace, "bench", clients)
            handlers.sync_job(runtime, namespace, "bench")  # the commit key first
            handlers.sync_job(runtime, namespace, "bench")

        seconds = timed(apply_and_pass)
        found = self.count_children(namespace, "bench")
        if found != 3 * clients + 3:
            raise RuntimeError(f"the first passes made {found} children, not {3 * clients + 3}")
        return seconds

    def steady_passes(self, runtime: handlers.Runtime, namespace: str) -> list[float]:
        handlers.sync_job(runtime, namespace, "bench")  # sets Created; then nothing changes
        return [
            timed(lambda: handlers.sync_job(runtime, namespace, "bench"))
            for _ in range(self.args.passes)
        ]

    # -- baselines with the plain client ----------------------------------------------------

    def baseline_creates(self, namespace: str, clients: int | None = None) -> float:
        owner = self.create_fj(namespace, "baseline-owner", clients)
        job = names.JobRef("baseline", namespace, owner["metadata"]["uid"])
        spec = fs.parse_spec(owner["spec"])
        settings = OperatorSettings()
        private, public = generate_key_pair()
        objects: list[tuple[Callable[..., Any], Obj]] = [
            (self.core.create_namespaced_secret, secrets.commit_key_secret(job, private, public)),
            (
                self.core.create_namespaced_config_map,
                configmap.spec_configmap(job, spec, public.decode()),
            ),
        ]
        for c in spec.clients:
            objects += [
                (self.core.create_namespaced_secret,
                 secrets.key_secret(job, c.name, generate_key())),
                (self.core.create_namespaced_service,
                 services.client_service(job, c.name, settings.master_port)),
                (self.batch.create_namespaced_job,
                 jobs.client_job(job, spec, c, settings, suspend=True)),
            ]  # fmt: skip
        objects.append(
            (
                self.batch.create_namespaced_job,
                jobs.aggregator_job(job, spec, settings, suspend=True),
            )
        )

        def create_all() -> None:
            for create, body in objects:
                create(namespace, body)

        return timed(create_all)

    def baseline_reads(self, namespace: str) -> list[float]:
        selector = f"{names.LABEL_JOB}=bench"

        def read() -> None:
            self.custom.get_namespaced_custom_object(
                fs.API_GROUP, fs.API_VERSION, namespace, fs.PLURAL, "bench"
            )
            self.batch.list_namespaced_job(namespace, label_selector=selector)
            self.core.list_namespaced_service(namespace, label_selector=selector)
            self.core.list_namespaced_secret(namespace, label_selector=selector)
            self.core.list_namespaced_config_map(namespace, label_selector=selector)

        return [timed(read) for _ in range(self.args.passes)]

    # -- the real operator process ----------------------------------------------------------

    def live_operator(self, namespace: str) -> float:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "FEDKUBE_RESYNC_SECONDS": "2",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator")]),
        }
        log_path = Path(tempfile.mkdtemp(prefix="fedkube-bench-")) / "operator.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "-m", "fedop", "--standalone",
                 f"--namespace={namespace}"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            time.sleep(5)  # kopf's start-up (watches established) is not what is measured
            expected = 3 * self.args.clients + 3
            t0 = time.perf_counter()
            self.create_fj(namespace, "live")
            while self.count_children(namespace, "live") < expected:
                if proc.poll() is not None:
                    raise RuntimeError(f"the operator exited; see {log_path}")
                if time.perf_counter() - t0 > 300:
                    raise RuntimeError(f"children not created within 300 s; see {log_path}")
                time.sleep(0.05)
            return time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="clients (default 100)")
    parser.add_argument("--replicas", type=int, default=4, help="pods per client (default 4)")
    parser.add_argument("--passes", type=int, default=20, help="steady passes (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="first passes (default 3)")
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fedkube-bench-") as tmp:
        work = Path(tmp)
        with (
            MinioServer(minio_binary(), work / "minio") as minio,
            cluster_kubeconfig(args.kubeconfig, work) as (kubeconfig, kubectl),
        ):
            bench = Bench(kubeconfig, kubectl, minio, args)
            bench.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
            bench.kubectl_run(
                "wait",
                "--for=condition=Established",
                "crd/federatedjobs.fedkube.io",
                "--timeout=60s",
            )
            suffix = os.urandom(3).hex()
            runtime = bench.runtime()
            # Warm-up: boto3's import and client, the CRD's first use, connection pools.
            bench.first_pass(runtime, bench.namespace(f"bench-warm-{suffix}"), 3)
            bench.baseline_creates(bench.namespace(f"bench-warmraw-{suffix}"), 3)
            firsts, creates = [], []
            for rep in range(args.repeats):
                operator_ns = bench.namespace(f"bench-op-{suffix}-{rep}")
                firsts.append(bench.first_pass(runtime, operator_ns, args.clients))
                creates.append(bench.baseline_creates(bench.namespace(f"bench-raw-{suffix}-{rep}")))
            steady_s = bench.steady_passes(runtime, operator_ns)
            base_reads = bench.baseline_reads(operator_ns)
            runtime.pool.shutdown()
            runtime.kube.close()
            live = bench.live_operator(bench.namespace(f"bench-live-{suffix}"))

    children = 3 * args.clients + 3
    first_s, base_create = statistics.median(firsts), statistics.median(creates)
    ours = {"children": children, "first_pass_s": first_s, "steady_pass_s": steady_s}
    steady = statistics.median(ours["steady_pass_s"])
    reads = statistics.median(base_reads)
    rows = [
        (
            "first pass: apply -> all children (median)",
            ours["first_pass_s"],
            base_create,
            "plain client, one create at a time",
        ),
        ("steady pass (median)", steady, reads, "plain client: get job + 4 lists"),
        ("steady pass (p95)", p95(ours["steady_pass_s"]), p95(base_reads), "same, p95"),
        (
            "live operator: apply -> all children",
            live,
            base_create,
            "plain client, one create at a time",
        ),
    ]
    print(
        f"\nfedkube operator, one FederatedJob of {args.clients} clients x {args.replicas} "
        f"pods ({ours['children']} children), real API server\n"
    )
    print(f"{'measure':44} {'fedkube':>10} {'baseline':>10} {'ratio':>7}  baseline is")
    for label, value, base, what in rows:
        print(f"{label:44} {value:9.3f}s {base:9.3f}s {value / base:6.2f}x  {what}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "operator_reconcile.json"
    out.write_text(json.dumps({
        "clients": args.clients, "replicas": args.replicas, "children": ours["children"],
        "first_pass_s": firsts, "steady_pass_s": steady_s,
        "live_operator_s": live, "baseline_create_s": base_create,
        "baseline_create_all_s": creates, "baseline_reads_s": base_reads,
        "machine": platform.platform(), "cpus": os.cpu_count(),
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwritten {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
