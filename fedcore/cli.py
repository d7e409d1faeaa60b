"""The ``fedkube`` command: one entry point for people and for pods.

People use ``run``, ``validate``, ``status``, ``plot`` and ``watch``; pods run
``aggregator`` and ``client`` (the operator puts exactly ``fedkube aggregator --job FILE`` and
``fedkube client --job FILE --client NAME`` into them). Every deliberate failure is a
``FedcoreError``: it becomes a short message on stderr and exit code 2 for mistakes the
user can fix in the job file, the task or the command line (nobody retries those; see
``fedcore.exitcodes``), 1 for failures at run time; never a traceback for a user error.
Heavy imports (torch) happen inside the subcommands that need them, so ``fedkube validate``
stays quick.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedcore import __version__
from fedcore.diagnostics import stacks_on_sigusr1
from fedcore.errors import FedcoreError, SpecError
from fedcore.exitcodes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, exit_code_for

if TYPE_CHECKING:
    from fedcore.cluster_view import ClusterTarget


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedkube",
        description="Federated learning of PyTorch models, on Kubernetes or on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"fedkube {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a FederatedJob on this machine (aggregator and clients as local processes)",
        description="Run a FederatedJob on this machine. Rerun the same command to resume an "
        "interrupted run.",
    )
    run.add_argument("job", type=Path, help="FederatedJob file (YAML or JSON)")
    run.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="run directory: job, keys, logs, plot and (without storage.endpoint) the object "
        "store; default ./runs/<job name>/",
    )
    run.add_argument(
        "--fresh", action="store_true", help="delete what the store holds for this job first"
    )
    run.add_argument(
        "--fork-server",
        dest="fork_server",
        action="store_true",
        help="fork every process from one that imported torch once instead of starting each "
        "from scratch (Linux; faster start-up, experimental: see docs/design.md)",
    )

    validate = sub.add_parser("validate", help="check a FederatedJob file and explain problems")
    validate.add_argument("job", type=Path, nargs="?", help="FederatedJob file (YAML or JSON)")
    validate.add_argument(
        "--schema", action="store_true", help="print the FederatedJob JSON schema and exit"
    )

    status = sub.add_parser("status", help="show the committed rounds of a run")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", type=Path, metavar="DIR", help="a run directory of fedkube run")
    where.add_argument("--job", type=Path, metavar="FILE", help="the job file of the run")

    plot = sub.add_parser(
        "plot", help="draw a job's rounds (metrics, client loss, durations, stragglers)"
    )
    _job_source(plot)
    plot.add_argument(
        "--out", type=Path, metavar="FILE", help="where to write (default <run>/<job>-rounds.<fmt>)"
    )
    plot.add_argument("--format", choices=("png", "svg"), default="png")

    watch = sub.add_parser(
        "watch", help="a live view of a job's rounds, clients and rejections (until it ends)"
    )
    _job_source(watch)
    watch.add_argument("--once", action="store_true", help="print one frame and exit")
    watch.add_argument(
        "--interval", type=_positive_seconds, default=2.0, metavar="SECONDS", help="refresh period"
    )

    aggregator = sub.add_parser("aggregator", help="(pods) run the aggregator's round loop")
    aggregator.add_argument("--job", type=Path, required=True, metavar="FILE")

    client = sub.add_parser(
        "client",
        help="run one pod's (or, with --bundle, one site machine's) share of a client's DDP group",
        description="In a pod: --job FILE --client NAME. At a site: --bundle FILE "
        "--nproc-per-node N, with NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT as for "
        "torchrun when the group spans several machines.",
    )
    client.add_argument("--job", type=Path, metavar="FILE")
    client.add_argument("--client", metavar="NAME")
    client.add_argument("--bundle", type=Path, metavar="FILE", help="a site's join bundle")
    client.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        metavar="N",
        help="training processes on this machine (with --bundle; default: the site's "
        "procsPerReplica)",
    )

    site = sub.add_parser("site", help="a site's side of a job: its join bundle")
    site_sub = site.add_subparsers(dest="site_command", required=True, metavar="SUBCOMMAND")
    bundle = site_sub.add_parser(
        "bundle", help="export a site client's join bundle from the coordinator's cluster"
    )
    bundle.add_argument("job", help="the FederatedJob's name")
    bundle.add_argument("client", help="the site client's name (spec.clients[].name)")
    bundle.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    bundle.add_argument("-n", "--namespace", default=None)
    bundle.add_argument("--kubeconfig", default=None)
    bundle.add_argument("--context", default=None)
    policy = site_sub.add_parser(
        "policy",
        help="print the store policy of a long-lived store user for a site client",
        description="Print, as an IAM or MinIO user policy, exactly what a site client may do "
        "in the store (the scoped client's session policy). The store admin creates the user "
        "with it (mc admin policy create / attach, or IAM) and stores its keys in the Secret "
        "named by the client's site.storeUser.",
    )
    policy.add_argument("job", help="the FederatedJob's name")
    policy.add_argument("client", help="the site client's name (spec.clients[].name)")
    policy.add_argument(
        "--job-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="read the job from this file (a fedkube run job) instead of the cluster",
    )
    policy.add_argument("-n", "--namespace", default=None)
    policy.add_argument("--kubeconfig", default=None)
    policy.add_argument("--context", default=None)
    return parser


def _cmd_validate(args: argparse.Namespace) -> int:
    from fedcore.jobfile import check_job_file
    from fedcore.spec import FederatedJob

    if args.schema:
        schema = FederatedJob.model_json_schema(by_alias=True)
        print(json.dumps(schema, indent=2))
        return EXIT_OK
    if args.job is None:
        raise SpecError([("<command line>", "give a job file, or --schema")])
    checked = check_job_file(args.job)
    for one in checked:
        job, spec = one.job, one.job.spec
        where = f"{args.job} (document {one.document})" if len(checked) > 1 else str(args.job)
        procs = sum(c.world_size for c in spec.clients)
        print(
            f"{where}: ok: FederatedJob {job.name!r}, {spec.rounds} rounds, "
            f"{len(spec.clients)} clients ({procs} training processes), strategy "
            f"{spec.strategy.name} with minClients {spec.min_clients}, task "
            f"{spec.task.entrypoint} ({one.task_note})"
        )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from fedcore.runner import RunOptions, run_job

    return run_job(
        RunOptions(
            job_path=args.job, run_dir=args.store, fresh=args.fresh, fork_server=args.fork_server
        )
    )


def _cmd_status(args: argparse.Namespace) -> int:
    from fedcore.runner import show_status

    return show_status(run_dir=args.store, job_path=args.job, out=sys.stdout)


def _job_source(parser: argparse.ArgumentParser) -> None:
    """A local run (``--store``/``--job``) or a FederatedJob on a cluster (``NAME``, with
    kubectl's ``-n``, ``--context`` and ``--kubeconfig``)."""
    parser.add_argument(
        "name", nargs="?", metavar="NAME", help="a FederatedJob on the cluster (read via kubectl)"
    )
    parser.add_argument("--store", type=Path, metavar="DIR", help="a run directory of fedkube run")
    parser.add_argument("--job", type=Path, metavar="FILE", help="the job file of the run")
    parser.add_argument("-n", "--namespace", help="the FederatedJob's namespace")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: kubectl's)")
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="S3 endpoint to read the job's store at, when its in-cluster address is not "
        "reachable from here (credentials: the standard AWS variables)",
    )


def _cluster_target(args: argparse.Namespace) -> ClusterTarget | None:
    sources = (("NAME", args.name), ("--store", args.store), ("--job", args.job))
    given = [flag for flag, value in sources if value is not None]
    if len(given) != 1:
        got = f"; got {' and '.join(given)}" if given else ""
        raise SpecError(
            [("NAME", f"give exactly one of NAME (a cluster job), --store DIR or --job FILE{got}")]
        )
    if args.name is None:
        flags = ("namespace", "context", "kubeconfig", "endpoint")
        cluster_only = [f for f in flags if getattr(args, f) is not None]
        if cluster_only:
            raise SpecError(
                [(f"--{cluster_only[0]}", "applies to a cluster job (NAME), not to a local run")]
            )
        return None
    from fedcore.cluster_view import ClusterTarget

    return ClusterTarget(args.name, args.namespace, args.context, args.kubeconfig)


def _cmd_plot(args: argparse.Namespace) -> int:
    from fedcore.run_plot import plot_job

    cluster = _cluster_target(args)
    return plot_job(
        args.store, args.job, args.out, args.format, sys.stdout,
        cluster=cluster, endpoint=args.endpoint,
    )  # fmt: skip


def _cmd_watch(args: argparse.Namespace) -> int:
    from fedcore.watch import watch_job

    cluster = _cluster_target(args)
    return watch_job(
        args.store, args.job, once=args.once, interval=args.interval, out=sys.stdout,
        cluster=cluster, endpoint=args.endpoint,
    )  # fmt: skip


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _cmd_aggregator(args: argparse.Namespace) -> int:
    from fedcore.aggregator import run_aggregator

    run_aggregator(args.job)
    return EXIT_OK


def _cmd_client(args: argparse.Namespace) -> int:
    if args.bundle is not None:
        if args.job is not None or args.client is not None:
            raise SpecError(
                [("<command line>", "--bundle names the job and the client; drop --job/--client")]
            )
        from fedcore.join_bundle import read_bundle
        from fedcore.site import run_site_client

        nproc = args.nproc_per_node
        if nproc is None:
            bundle = read_bundle(args.bundle)
            nproc = bundle.job.spec.client(bundle.client).procs_per_replica
        return run_site_client(args.bundle, nproc)
    if args.job is None or args.client is None or args.nproc_per_node is not None:
        raise SpecError(
            [
                (
                    "<command line>",
                    "give --job FILE --client NAME (a pod), or --bundle FILE "
                    "[--nproc-per-node N] (a site)",
                )
            ]
        )
    from fedcore.client import launch_client_group

    result = launch_client_group(args.job, args.client)
    return int(result) if isinstance(result, int) else EXIT_OK


def _cmd_site(args: argparse.Namespace) -> int:
    from fedcore.credentials import ScopedCredentials
    from fedcore.site import KubectlTarget, cluster_job, export_bundle, site_policy

    target = KubectlTarget(args.kubeconfig, args.context, args.namespace)
    if args.site_command == "policy":
        if args.job_file is not None:
            from fedcore.spec import load_job

            job = load_job(args.job_file)
            if job.name != args.job:
                raise SpecError(
                    [("metadata.name", f"{args.job_file} holds job {job.name!r}, not {args.job!r}")]
                )
        else:
            job = cluster_job(args.job, target)
        print(json.dumps(site_policy(job, args.client), indent=2))
        return EXIT_OK
    bundle = export_bundle(args.job, args.client, args.output, target)
    lasts = (
        f"expires {bundle.credentials.expiration.isoformat()}"
        if isinstance(bundle.credentials, ScopedCredentials)
        else "is the site's long-lived store user"
    )
    print(
        f"wrote the join bundle of site {bundle.client!r} of job {bundle.job.name!r} to "
        f"{args.output} (keep it secret; its store credential {lasts})"
    )
    return EXIT_OK


_COMMANDS = {
    "run": _cmd_run,
    "validate": _cmd_validate,
    "status": _cmd_status,
    "plot": _cmd_plot,
    "watch": _cmd_watch,
    "aggregator": _cmd_aggregator,
    "client": _cmd_client,
    "site": _cmd_site,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stacks_on_sigusr1()  # `kill -USR1 PID`: where a run that seems stuck is
    try:
        return _COMMANDS[args.command](args)
    except FedcoreError as error:
        print(f"fedkube {args.command}: error: {error}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print(f"fedkube {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`fedkube status ... | head`): nothing more to say to it, and
        # Python would print a traceback when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
