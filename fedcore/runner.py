"""``fedkube run``: a whole FederatedJob on one machine, supervised like the operator would.

The runner plays the cluster's part on a laptop. It starts the aggregator and, for every
client, ``replicas`` "pod" processes (``fedkube client``) with the torchrun environment the
operator sets in pods, each in its own session with its output in ``<run>/logs/<name>.log``.
It then supervises them the way the operator does: a client group with a failed member is
stopped as a whole and restarted, up to ``runPolicy.backoffLimit``; past it the client is
excluded (``control/excluded.json``) and the job goes on while ``minClients`` remain. It
shows a line per committed round by watching the store, so what it prints is what was
committed, and ends with the final metrics, the model's URI and a plot.

A run directory holds everything local to a run: ``job.json`` (the resolved job), ``keys/``
(per-client HMAC keys, 0600), ``commit-key/`` (the job's Ed25519 pair: ``private.pem``,
0600, handed to the aggregator process only; ``public.pem`` for the clients and
``fedkube status``), ``logs/``, ``store/`` (the local object store, unless the spec
names an S3 endpoint) and ``metrics.png``. Rerunning the same command resumes an
unfinished run; a finished one is reported and left alone (``--fresh`` starts over).

Processes never outlive the runner: it makes itself the subreaper of everything it starts
(Linux), so workers that torch's launcher puts in sessions of their own are still found and
stopped on failure, on Ctrl-C and at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psutil

from fedcore import layout
from fedcore.commit_signing import (
    CommitVerifier,
    UnverifiedRecord,
    load_verifier,
    read_final_record,
    read_round_record,
)
from fedcore.credentials import Role
from fedcore.errors import FedcoreError, ObjectNotFound, RoundProtocolError, SpecError
from fedcore.exitcodes import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from fedcore.layout import store_location
from fedcore.local_credentials import KEPT_AWS_VARS, LocalCredentials
from fedcore.local_sites import write_site_bundles
from fedcore.progress import header_lines, round_line, summary_lines, write_plot
from fedcore.rounds import training_differences
from fedcore.run_processes import (
    Group,
    Member,
    become_subreaper,
    describe_exit,
    free_port,
    log_tail,
    stop_processes,
)
from fedcore.spec import FederatedJob, job_prefix, parse_job
from fedcore.store import ObjectStore, open_store
from fedcore.tracking import CREDENTIAL_ENV as TRACKING_CREDENTIAL_ENV
from fedcore.zygote import Zygote, ZygoteError, preload_modules, start_zygote

POLL_SECONDS = 0.2
"""Supervision tick: how often exits are noticed and the store is checked for commits."""
CLIENT_EXIT_GRACE_SECONDS = 60.0
"""After the aggregator finished, how long clients get to notice and exit on their own."""


class RunFailed(FedcoreError):
    """A process of the run failed past its restart budget; the message says which and why."""


# ---- the run directory -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """Paths of one local run."""

    root: Path

    @property
    def job_file(self) -> Path:
        return self.root / "job.json"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def store_root(self) -> Path:
        return self.root / "store"

    @property
    def plot(self) -> Path:
        return self.root / "metrics.png"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def key(self, client: str) -> Path:
        return self.keys / client

    @property
    def commit_key(self) -> Path:
        return self.root / "commit-key" / "private.pem"

    @property
    def commit_public_key(self) -> Path:
        return self.root / "commit-key" / "public.pem"


def default_run_dir(job: FederatedJob) -> Path:
    return Path("runs") / job.name


def open_run_store(job: FederatedJob, run: RunDir) -> ObjectStore:
    """The job's store: S3 when the spec names an endpoint, else ``<run>/store``."""
    return open_store(job.spec.storage, job_prefix(job), local_root=run.store_root)


def write_keys(job: FederatedJob, run: RunDir) -> None:
    """One HMAC key per client (kept across resumes: uploaded updates carry signatures)."""
    from fedcore.signing import generate_key

    run.keys.mkdir(parents=True, exist_ok=True)
    os.chmod(run.keys, 0o700)
    for client in job.spec.clients:
        path = run.key(client.name)
        if path.exists():
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(generate_key().encode())
        tmp.replace(path)


def write_commit_key(run: RunDir) -> None:
    """The job's commit signing pair, made once (kept across resumes: the aggregator verifies
    its earlier records with it)."""
    from fedcore.commit_signing import generate_key_pair

    if run.commit_key.exists() and run.commit_public_key.exists():
        return
    folder = run.commit_key.parent
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    private, public = generate_key_pair()
    for path, data, mode in (
        (run.commit_key, private, 0o600),
        (run.commit_public_key, public, 0o644),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        tmp.replace(path)


def commit_verifier(run: RunDir) -> CommitVerifier:
    """The run's public commit key; a run directory without one cannot vouch for its store."""
    if not run.commit_public_key.exists():
        raise SpecError(
            [
                (
                    "--store",
                    f"{run.root} has no {run.commit_public_key.name} (the public key its "
                    "aggregator signs records with), so no record of its store can be trusted; "
                    "rerun the job with --fresh",
                )
            ]
        )
    return load_verifier(run.commit_public_key)


def read_records(store: ObjectStore, verifier: CommitVerifier) -> list[layout.RoundRecord]:
    """Every committed round's record, verified (``UnverifiedRecord`` otherwise)."""
    keys = store.list(layout.ROUNDS_PREFIX)
    return [
        read_round_record(store.get_bytes(layout.round_record_key(r)), r, verifier)
        for r in layout.committed_rounds(keys)
    ]


def read_final(store: ObjectStore, verifier: CommitVerifier) -> layout.FinalRecord | None:
    """The final record, verified; None when there is none yet."""
    try:
        data = store.get_bytes(layout.FINAL_RECORD_KEY)
    except ObjectNotFound:
        return None
    return read_final_record(data, verifier)


def stored_job(store: ObjectStore) -> FederatedJob | None:
    try:
        data = store.get_bytes(layout.JOB_KEY)
    except ObjectNotFound:
        return None
    return parse_job(json.loads(data), source=store.uri(layout.JOB_KEY))


def wipe_store(store: ObjectStore) -> int:
    keys = store.list()
    for key in keys:
        store.delete(key)
    return len(keys)


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class RunOptions:
    job_path: Path
    run_dir: Path | None = None
    fresh: bool = False
    fork_server: bool = False
    """Fork the run's processes from one that imported torch once (``fedcore.zygote``;
    Linux), instead of starting each from scratch. Off by default until the run tests can
    check each forked process's credentials from outside it (``/proc/<pid>/environ`` shows the
    fork server's environment, not the one the child was given)."""
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)


class _Progress:
    """Prints one line per newly committed round, read from the store."""

    def __init__(
        self, store: ObjectStore, job: FederatedJob, out: TextIO, verifier: CommitVerifier
    ) -> None:
        self.store = store
        self.job = job
        self.out = out
        self.verifier = verifier
        self.records: list[layout.RoundRecord] = []
        self.next_round = 0
        self.refused: UnverifiedRecord | None = None
        """The record that stopped the listing: it does not verify with the job's key."""

    def poll(self) -> None:
        while self.next_round <= self.job.spec.rounds:
            key = layout.round_record_key(self.next_round)
            try:
                data = self.store.get_bytes(key)
            except ObjectNotFound:
                return
            try:
                record = read_round_record(data, self.next_round, self.verifier)
            except UnverifiedRecord as e:
                if self.refused is None or str(self.refused) != str(e):
                    width = len(str(self.job.spec.rounds))
                    head = f"round {self.next_round:>{width}}/{self.job.spec.rounds}"
                    print(f"{head}  REFUSED: {e}", file=self.out, flush=True)
                self.refused = e
                return
            previous = self.records[-1] if self.records else None
            selected = len(previous.next.selected) if previous and previous.next else None
            self.records.append(record)
            self.next_round += 1
            print(round_line(record, self.job.spec.rounds, selected), file=self.out, flush=True)


class Runner:
    def __init__(
        self,
        job: FederatedJob,
        run: RunDir,
        store: ObjectStore,
        opts: RunOptions,
        credentials: LocalCredentials | None = None,
    ):
        self.job = job
        self.run = run
        self.store = store
        self.opts = opts
        self.credentials = credentials
        """Each role's scoped store credentials (None: processes share the runner's)."""
        self.groups: list[Group] = []
        self.excluded: dict[str, str] = {}
        self.interrupted = threading.Event()
        self.progress = _Progress(store, job, opts.out, commit_verifier(run))
        self.zygote: Zygote | None = None

    # -- environment and commands --

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        workers = 1 + sum(c.world_size for c in self.job.spec.clients if not c.is_site)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        env["PYTHONUNBUFFERED"] = "1"
        env["FEDKUBE_STORE_DIR"] = str(self.run.store_root.resolve())
        for name in (
            "FEDKUBE_SIGNING_KEYS_DIR",
            "FEDKUBE_SIGNING_KEY_FILE",
            "FEDKUBE_COMMIT_KEY_FILE",
            "FEDKUBE_COMMIT_PUBLIC_KEY_FILE",
        ):
            env.pop(name, None)
        return env

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fedcore.cli", *args]

    def _role_env(self, role: Role) -> dict[str, str]:
        env = self._base_env()
        if role.client is not None:  # the tracking server's credential is the aggregator's
            for name in TRACKING_CREDENTIAL_ENV:
                env.pop(name, None)
        return env if self.credentials is None else self.credentials.environment(role, env)

    def _shared_env(self) -> dict[str, str]:
        """What every process of the run may see, for the fork server: no role's credential
        (its memory, environment included, is copied into every process it forks)."""
        env = self._base_env()
        for name in TRACKING_CREDENTIAL_ENV:
            env.pop(name, None)
        if self.credentials is not None:  # each role gets its own, scoped one
            env = {k: v for k, v in env.items() if not k.startswith("AWS_") or k in KEPT_AWS_VARS}
        return env

    def _aggregator_members(self) -> list[Member]:
        env = self._role_env(Role.aggregator())
        env["FEDKUBE_SIGNING_KEYS_DIR"] = str(self.run.keys.resolve())
        env["FEDKUBE_COMMIT_KEY_FILE"] = str(self.run.commit_key.resolve())
        argv = self._cli("aggregator", "--job", str(self.run.job_file.resolve()))
        return [Member("aggregator", argv, env, self.run.log("aggregator"), self.zygote)]

    def _client_members(self, name: str) -> Callable[[], list[Member]]:
        client = self.job.spec.client(name)

        def make() -> list[Member]:
            if client.world_size == 1:
                return [self._single_rank_member(name)]
            port = free_port()  # fresh per start: the previous one may linger in TIME_WAIT
            members = []
            for index in range(client.replicas):
                env = self._role_env(Role.for_client(name))
                env["FEDKUBE_SIGNING_KEY_FILE"] = str(self.run.key(name).resolve())
                env["FEDKUBE_COMMIT_PUBLIC_KEY_FILE"] = str(self.run.commit_public_key.resolve())
                env.update(
                    PET_NNODES=str(client.replicas),
                    PET_NODE_RANK=str(index),
                    PET_NPROC_PER_NODE=str(client.procs_per_replica),
                    PET_MASTER_ADDR="127.0.0.1",
                    PET_MASTER_PORT=str(port),
                )
                argv = self._cli(
                    "client", "--job", str(self.run.job_file.resolve()), "--client", name
                )
                pod = f"{name}-{index}"
                members.append(Member(pod, argv, env, self.run.log(pod), self.zygote))
            return members

        return make

    def _single_rank_member(self, name: str) -> Member:
        """A one-process client runs its rank directly (a DDP group of one, built
        in-process), not a launcher that starts the rank as a second process."""
        env = self._role_env(Role.for_client(name))
        env["FEDKUBE_SIGNING_KEY_FILE"] = str(self.run.key(name).resolve())
        env["FEDKUBE_COMMIT_PUBLIC_KEY_FILE"] = str(self.run.commit_public_key.resolve())
        job_file = str(self.run.job_file.resolve())
        argv = [sys.executable, "-m", "fedcore.client", "--job", job_file, "--client", name]
        pod = f"{name}-0"
        return Member(pod, argv, env, self.run.log(pod), self.zygote)

    def _start_zygote(self) -> None:
        if not self.opts.fork_server or not sys.platform.startswith("linux"):
            return
        modules = preload_modules(self.job.spec.task.entrypoint)
        try:
            self.zygote = start_zygote(self._shared_env(), self.run.log("fork-server"), modules)
        except ZygoteError as e:
            self._say(f"note: {e}; starting every process from scratch")

    # -- supervision --

    def _say(self, text: str) -> None:
        print(text, file=self.opts.out, flush=True)

    def _exclude(self, group: Group, member: Member, code: int) -> None:
        if code == EXIT_CONFIG:
            why = "stopped on a configuration error (not restarted: the same job fails again)"
        else:
            why = (
                f"failed {group.restarts + 1} times (runPolicy.backoffLimit "
                f"{self.job.spec.run_policy.backoff_limit})"
            )
        reason = f"{why}; last {describe_exit(code)}, log {member.log}"
        self.excluded[group.name] = reason
        record = layout.ExcludedClients(clients=dict(self.excluded))
        self.store.put_bytes(layout.EXCLUDED_KEY, record.to_json())
        group.state = "excluded"

    def _failure(self, what: str, member: Member, code: int, budget: int) -> str:
        if code == EXIT_CONFIG:
            headline = (
                f"{what} stopped on a configuration error ({describe_exit(code)}); it was not "
                "restarted, since the same job fails the same way: fix the job file or its "
                "task (the log says what is wrong) and rerun."
            )
        else:
            headline = (
                f"{what} failed: {describe_exit(code)} after {budget} restart(s) "
                f"(runPolicy.backoffLimit {self.job.spec.run_policy.backoff_limit})."
            )
        return f"{headline}\n  log: {member.log}\n  last lines:\n{log_tail(member.log)}"

    def _check_client(self, group: Group) -> None:
        if group.state != "running":
            return
        if group.all_succeeded():
            group.state = "succeeded"
            return
        member = group.failed_member()
        if member is None:
            return
        code = member.returncode()
        assert code is not None  # failed_member only returns exited members
        group.stop()
        self._reap_orphans()
        limit = self.job.spec.run_policy.backoff_limit
        if code != EXIT_CONFIG and group.restarts < limit:
            group.restarts += 1
            self._say(
                f"client {group.name}: {member.name} {describe_exit(code)}; restarting the "
                f"group ({group.restarts}/{limit}), log {member.log}"
            )
            group.start()
            return
        self._exclude(group, member, code)
        remaining = [c.name for c in self.job.spec.clients if c.name not in self.excluded]
        message = self._failure(f"client {group.name!r}", member, code, limit)
        if len(remaining) < self.job.spec.min_clients:
            raise RunFailed(
                f"{message}\n  {len(remaining)} client(s) remain, fewer than "
                f"strategy.minClients={self.job.spec.min_clients}: the job cannot go on."
            )
        self._say(f"{message}\n  excluded; going on with {len(remaining)} clients.")

    def _check_aggregator(self, group: Group) -> bool:
        """True once the aggregator finished the job."""
        if group.state == "succeeded":
            return True
        member = group.members[0]
        code = member.returncode()
        if code is None:
            return False
        if code == 0:
            member.close_log()
            group.state = "succeeded"
            return True
        group.stop()
        limit = self.job.spec.run_policy.backoff_limit
        if code == EXIT_CONFIG or group.restarts >= limit:
            raise RunFailed(self._failure("the aggregator", member, code, limit))
        group.restarts += 1
        self._say(
            f"aggregator {describe_exit(code)}; restarting it ({group.restarts}/{limit}), "
            f"log {member.log}"
        )
        group.start()
        return False

    def _stop_all(self) -> None:
        running = [g for g in self.groups if g.state == "running"]
        stop_processes([pid for g in running for pid in g.pids()])
        for group in running:
            group.stop(grace=1.0)
            group.state = "stopped"
        self._reap_orphans()

    def _reap_orphans(self) -> None:
        """Stop descendants no running member accounts for: workers of a dead launcher,
        re-parented to us (we are their subreaper)."""
        tracked = {
            m.proc.pid
            for g in self.groups
            if g.state == "running"
            for m in g.members
            if m.proc is not None and m.proc.poll() is None
        }
        if self.zygote is not None:
            tracked.add(self.zygote.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            orphans = [c.pid for c in psutil.Process().children() if c.pid not in tracked]
            if orphans:
                stop_processes(orphans, grace=2.0)

    def _wait_for_clients(self) -> None:
        deadline = time.monotonic() + CLIENT_EXIT_GRACE_SECONDS
        while time.monotonic() < deadline and not self.interrupted.is_set():
            clients = [g for g in self.groups if g.kind == "client" and g.state == "running"]
            for group in clients:
                if group.all_succeeded():
                    group.state = "succeeded"
                elif (member := group.failed_member()) is not None:
                    code = member.returncode()
                    group.stop(grace=2.0)
                    group.state = "stopped"
                    self._say(
                        f"note: client {group.name}: {member.name} "
                        f"{describe_exit(code or 0)} after the job finished; log {member.log}"
                    )
            if not any(g.state == "running" for g in clients):
                return
            time.sleep(POLL_SECONDS)
        late = [g.name for g in self.groups if g.kind == "client" and g.state == "running"]
        if late:
            self._say(f"note: stopping clients that did not exit on their own: {', '.join(late)}")

    def supervise(self) -> int:
        started = time.monotonic()
        active_deadline = self.job.spec.run_policy.active_deadline_seconds
        aggregator = Group("aggregator", "aggregator", self._aggregator_members)
        self.groups = [aggregator] + [
            Group(c.name, "client", self._client_members(c.name))
            for c in self.job.spec.clients
            if c.name not in self.excluded and not c.is_site  # a site runs its own group
        ]
        self._start_zygote()
        try:
            for group in self.groups:
                group.start()
            while True:
                if self.interrupted.wait(POLL_SECONDS):
                    self._stop_all()
                    self.progress.poll()
                    print("interrupted; rerun the same command to resume", file=self.opts.err)
                    return EXIT_INTERRUPTED
                for group in self.groups[1:]:
                    self._check_client(group)
                done = self._check_aggregator(aggregator)
                self.progress.poll()
                if done:
                    self._wait_for_clients()
                    break
                if active_deadline is not None and time.monotonic() - started > active_deadline:
                    raise RunFailed(
                        f"the job ran past runPolicy.activeDeadlineSeconds={active_deadline}"
                    )
        except RunFailed:
            self._stop_all()
            self.progress.poll()
            raise
        finally:
            self._stop_all()
            if self.zygote is not None:
                self.zygote.close()
        return EXIT_OK


@contextlib.contextmanager
def _signals_set(event: threading.Event) -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _finish(
    job: FederatedJob, run: RunDir, store: ObjectStore, out: TextIO, t0: float | None
) -> None:
    verifier = commit_verifier(run)
    final = read_final(store, verifier)
    if final is None:
        raise RoundProtocolError(
            f"the aggregator exited 0 but {store.uri(layout.FINAL_RECORD_KEY)} is missing"
        )
    records = read_records(store, verifier)
    plot = write_plot(records, run.plot, f"{job.name}: global model per round")
    elapsed = None if t0 is None else time.monotonic() - t0
    uri = store.uri(layout.FINAL_MODEL_KEY)
    for line in summary_lines(final, uri, plot, elapsed, job.spec.rounds):
        print(line, file=out, flush=True)


def run_job(opts: RunOptions) -> int:
    """``fedkube run``: returns the process exit code; raises FedcoreError for the CLI."""
    from fedcore.spec import load_job

    job = load_job(opts.job_path)
    if job.spec.run_policy.suspend:
        print(
            f"job {job.name!r} is suspended (spec.runPolicy.suspend); nothing to run", file=opts.out
        )
        return EXIT_OK
    run = RunDir(opts.run_dir or default_run_dir(job))
    run.root.mkdir(parents=True, exist_ok=True)
    store = open_run_store(job, run)

    if opts.fresh:
        removed = wipe_store(store)
        for folder in (run.logs, run.keys, run.commit_key.parent):
            shutil.rmtree(folder, ignore_errors=True)
        run.plot.unlink(missing_ok=True)
        print(f"--fresh: removed {removed} objects from {store_location(store)}", file=opts.out)

    previous = stored_job(store)
    if previous is not None:
        diff = training_differences(previous.spec, job.spec)
        if diff:
            raise SpecError(
                [
                    (
                        "spec",
                        f"{store_location(store)} holds a run of a different spec (changed: "
                        f"{', '.join(diff.fields)}); rerun with --fresh to start over, or "
                        "pass another --store",
                    )
                ],
                source=str(opts.job_path),
            )
        if run.commit_public_key.exists() and read_final(store, commit_verifier(run)) is not None:
            print(
                f"job {job.name!r} already finished in {store_location(store)}; "
                "rerun with --fresh to start over",
                file=opts.out,
            )
            _finish(job, run, store, opts.out, None)
            return EXIT_OK

    # Before anything starts: a store that cannot mint scoped credentials fails the run here.
    credentials = LocalCredentials.for_run(job, os.environ, opts.err)
    try:
        return _run(job, run, store, opts, credentials)
    finally:
        if credentials is not None:
            credentials.close()


def _run(
    job: FederatedJob,
    run: RunDir,
    store: ObjectStore,
    opts: RunOptions,
    credentials: LocalCredentials | None,
) -> int:
    run.job_file.write_text(json.dumps(job.to_object(), indent=2) + "\n")
    write_keys(job, run)
    write_commit_key(run)
    become_subreaper()

    runner = Runner(job, run, store, opts, credentials)
    with contextlib.suppress(ObjectNotFound):
        runner.excluded = dict(
            layout.ExcludedClients.model_validate_json(store.get_bytes(layout.EXCLUDED_KEY)).clients
        )
    for line in header_lines(
        job.name,
        job.spec.rounds,
        [c.name for c in job.spec.clients],
        store_location(store),
        run.logs,
    ):
        print(line, file=opts.out, flush=True)
    if runner.excluded:
        print(f"  excluded earlier: {', '.join(sorted(runner.excluded))}", file=opts.out)
    write_site_bundles(
        job,
        run.root / "sites",
        credentials,
        key_file={c.name: run.key(c.name) for c in job.spec.clients},
        commit_public_key=run.commit_public_key,
        out=opts.out,
    )
    t0 = time.monotonic()
    with _signals_set(runner.interrupted):
        code = runner.supervise()
    if code == EXIT_OK:
        _finish(job, run, store, opts.out, t0)
    return code


def open_for_reading(
    run_dir: Path | None, job_path: Path | None
) -> tuple[FederatedJob, RunDir, ObjectStore]:
    """The job, run directory and store that ``--store DIR`` or ``--job FILE`` name."""
    from fedcore.spec import load_job

    if run_dir is not None:
        run = RunDir(run_dir)
        if not run.job_file.exists():
            raise SpecError(
                [("--store", f"{run_dir} is not a run directory of `fedkube run` (no job.json)")]
            )
        job = load_job(run.job_file)
    else:
        assert job_path is not None  # argparse requires one of the two
        job = load_job(job_path)
        run = RunDir(default_run_dir(job))
    return job, run, open_run_store(job, run)


def show_status(run_dir: Path | None, job_path: Path | None, out: TextIO) -> int:
    """``fedkube status``: the committed rounds of a run, read from its store."""
    job, run, store = open_for_reading(run_dir, job_path)
    for line in header_lines(
        job.name, job.spec.rounds, [c.name for c in job.spec.clients], store_location(store), None
    ):
        print(line, file=out)
    verifier = commit_verifier(run)
    progress = _Progress(store, job, out, verifier)
    progress.poll()
    # A record that does not verify is shown (REFUSED) and makes the exit code 1.
    code = EXIT_OK if progress.refused is None else EXIT_FAILED
    if not progress.records:
        print("  no round committed yet", file=out)
        return code
    try:
        final = read_final(store, verifier)
    except UnverifiedRecord as e:
        print(f"final  REFUSED: {e}", file=out)
        return EXIT_FAILED
    if final is None:
        last = progress.records[-1].round
        print(f"in progress: {last} of {job.spec.rounds} rounds committed", file=out)
        return code
    plot = run.plot if run.plot.exists() else None
    for line in summary_lines(
        final, store.uri(layout.FINAL_MODEL_KEY), plot, None, job.spec.rounds
    ):
        print(line, file=out)
    return code
