"""A client's side of the round protocol: one DDP group that trains the rounds it is picked for.

A client (a hospital, a lab) runs as ``replicas`` pods of ``procsPerReplica`` processes each,
one DDP group. ``launch_client_group`` is what a pod runs (``fedkube client``): it starts the
pod's processes with torch's elastic launcher (static rendezvous, from the operator's
``PET_*`` variables). Each process runs ``python -m fedcore.client --job FILE --client NAME``
(``main``), which joins the group and enters ``run_client``:

* rank 0 alone reads the store. It polls, with backoff, for the newest committed round r
  whose record the aggregator signed (``fedcore.round_watch``: probes, never a listing);
  every poll it tells the other ranks what to do (wait / train round r+1 / finish), so a
  dead rank is noticed within seconds, not at the next round.
* to train: rank 0 downloads round r's global model and broadcasts it; every rank trains on
  its ``DistributedSampler`` shard of the client's data (the task's ``train``); rank 0
  uploads ``local - global`` and then the signed manifest (its commit), with
  ``num_samples`` = the whole client's data.
* with ``strategy.name: scaffold`` rank 0 also reads the server's and its own control
  variates (``fedcore.variates``) and broadcasts them; every rank corrects its gradients
  (``fedcore.tasks.scaffold``); rank 0 stores the client's next variate, then uploads the
  update with the variate's delta in it.
* it exits 0 once ``final/round.json`` exists. An update already in the store (a restarted
  group) is not trained again. Any failure on any rank fails the whole group (DDP cannot
  lose a member): the operator or the local runner restarts it.

Rerunning a round gives the same bytes: shuffling and every random draw derive from
``(spec.seed, round, client[, rank])``, and deterministic algorithms are on.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fedcore import layout
from fedcore.commit_signing import CommitVerifier, read_round_record, verifier_from_env
from fedcore.credentials import Role
from fedcore.diagnostics import stacks_on_sigusr1
from fedcore.distributed import (
    DistContext,
    LaunchError,
    all_gather_object,
    broadcast_object,
    broadcast_state_dict,
    init_distributed,
    int_var,
    shutdown_distributed,
)
from fedcore.errors import (
    FedcoreError,
    ObjectExists,
    ObjectNotFound,
    RoundProtocolError,
    StoreUnavailable,
    TaskError,
)
from fedcore.exitcodes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, exit_code_for
from fedcore.quantization import quantise_update
from fedcore.records import fit_metrics
from fedcore.round_watch import WAIT, RoundWatcher, Work
from fedcore.sharding import ShardedTraining
from fedcore.signing import SigningKey, key_from_env, sign_manifest
from fedcore.spec import ClientSpec, FederatedJob, load_job
from fedcore.store import ObjectStore, open_job_store
from fedcore.tasks.base import (
    Task,
    TaskContext,
    derive_seed,
    global_batch_size,
    load_task,
    train_loader,
)
from fedcore.tasks.proximal import ProximalTerm
from fedcore.tasks.scaffold import (
    ControlCorrection,
    LocalSGD,
    local_sgd,
    next_variate,
    trainable_names,
)
from fedcore.variates import read_client_variate, read_server_variate, write_client_variate
from fedcore.weights import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    Tensors,
    delta,
    dtype_name,
    load_weights,
    save_weights,
    sha256_file,
    template_of,
    update_metadata,
)

log = logging.getLogger("fedcore.client")

CLIENT_MODULE = "fedcore.client"
"""What the launcher runs per rank: ``python -m fedcore.client --job FILE --client NAME``."""
"""Root folder of the local store (jobs without ``spec.storage.endpoint``); same variable as
the aggregator's."""

_SERVER = "server/"
_OWN = "own/"
"""Name prefixes of SCAFFOLD's two variates in the one broadcast that carries both."""

POLL_MIN_SECONDS = 0.2
"""First wait after a poll found nothing to do: a new round is usually seconds away."""
POLL_MAX_SECONDS = 3.0
"""Longest wait between polls. It bounds both the store's request rate per idle client and
how long the other ranks go without hearing from rank 0 (a dead rank is noticed then)."""
POLL_FACTOR = 1.5
LOCAL_POLL_MAX_SECONDS = 0.25
"""Longest wait between polls of a store on this machine (``local_reads``: a poll is a file
read): a new round is noticed within this, not within ``POLL_MAX_SECONDS``, which was most
of a small model's round on ``fedkube run``."""

RDZV_TIMEOUT_SECONDS = 900
"""How long the group's first pod waits for the others at rendezvous (pods of one client
may be scheduled minutes apart)."""


class Backoff:
    """Poll intervals: ``POLL_MIN_SECONDS`` growing by ``POLL_FACTOR`` to ``POLL_MAX_SECONDS``."""

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low = POLL_MIN_SECONDS if low is None else low
        self.high = POLL_MAX_SECONDS if high is None else high
        self._next = self.low

    def next(self) -> float:
        value = self._next
        self._next = min(self.high, self._next * POLL_FACTOR)
        return value

    def reset(self) -> None:
        self._next = self.low


# ---- one rank's loop --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientOptions:
    """The task-config keys the client itself reads (everything else is the task's)."""

    num_threads: int | None = None
    """``numThreads``: CPU threads per process; unset means 1 on CPU (see distributed.py)."""
    wire_dtype: torch.dtype | None = None
    """``spec.strategy.updateDtype``: wire dtype of uploaded float deltas (None: the model's
    own, ``float32``; ``bfloat16`` halves uploads, ``int8`` quarters them: per-slice
    quantised, see ``fedcore.quantization``)."""
    deterministic: bool = True
    """``deterministic``: ``torch.use_deterministic_algorithms`` (warn-only), so rerunning a
    round gives the same bytes."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], update_dtype: str = "float32") -> ClientOptions:
        """The options of ``config`` (the client's task config) and the job's
        ``strategy.updateDtype``."""
        threads = config.get("numThreads")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise TaskError(f"task.config.numThreads: must be a positive integer (got {threads!r})")
        if "updateDtype" in config:  # a job file written before the typed field
            raise TaskError(
                "task.config.updateDtype moved to spec.strategy.updateDtype (float32, bfloat16 "
                "or int8, for every client); set it there and remove it from the task config"
            )
        wire = wire_dtype_of(update_dtype)
        deterministic = config.get("deterministic", True)
        if not isinstance(deterministic, bool):
            raise TaskError(
                f"task.config.deterministic: must be true or false (got {deterministic!r})"
            )
        return cls(
            num_threads=threads,
            wire_dtype=None if wire == torch.float32 else wire,
            deterministic=deterministic,
        )


def wire_dtype_of(update_dtype: str) -> torch.dtype:
    """The torch dtype of a ``strategy.updateDtype`` value."""
    wire = DTYPE_NAMES.get(update_dtype)
    if wire is None or wire not in {torch.float32, torch.bfloat16, torch.float16, torch.int8}:
        raise TaskError(
            "strategy.updateDtype: must be one of 'float32', 'bfloat16', 'float16', 'int8' "
            f"(got {update_dtype!r})"
        )
    return wire


class ClientRank:
    """One rank's state across rounds: the task, its data, the (DDP-wrapped) model."""

    def __init__(
        self,
        job: FederatedJob,
        client: ClientSpec,
        dist_ctx: DistContext,
        store: ObjectStore | None,
        signing_key: SigningKey | None,
        workdir: Path,
        commit_verifier: CommitVerifier | None = None,
    ) -> None:
        self.job = job
        self.spec = job.spec
        self.client = client
        self.index = [c.name for c in self.spec.clients].index(client.name)
        self.config = self.spec.task_config_for(client.name)
        self.options = ClientOptions.from_config(self.config, self.spec.strategy.update_dtype)
        self.dist = dist_ctx
        self.store = store
        self.signing_key = signing_key
        self.commit_verifier = commit_verifier
        """The aggregator's public key (rank 0): SCAFFOLD reads records beyond the watcher's."""
        self.workdir = workdir
        self.task: Task = load_task(self.spec.task.entrypoint)
        self._model: nn.Module | None = None
        self._ddp: nn.Module | None = None
        self._data: Any = None
        self._sharded = ShardedTraining(self) if client.parallelism.mode == "fsdp" else None
        """FSDP training (``fedcore.sharding``) instead of DDP."""

    def ctx(self, r: int) -> TaskContext:
        return TaskContext(
            config=self.config,
            seed=self.spec.seed,
            round=r,
            client=self.client.name,
            client_index=self.index,
            num_clients=len(self.spec.clients),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            device=self.dist.device,
            sharded=self._sharded is not None,
        )

    # -- setup, once per process ------------------------------------------------------------

    def _prepare(self, ctx: TaskContext) -> tuple[nn.Module, nn.Module, Any]:
        """Build the model (wrapped in DDP once for the process) and load the data once."""
        if self._model is None or self._ddp is None:
            _seed_everything(derive_seed(self.spec.seed, "init"))
            model = self.task.build_model(ctx)
            if not isinstance(model, nn.Module):
                raise TaskError(
                    f"{self.spec.task.entrypoint}.build_model returned a {type(model).__name__}, "
                    "not a torch.nn.Module"
                )
            model.to(ctx.device)
            ddp: nn.Module = model
            if self.dist.world_size > 1:
                ddp = DistributedDataParallel(
                    model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
                )
            self._model, self._ddp = model, ddp
            self._data = self.task.train_dataset(ctx)
            n = _length(self._data, self.spec.task.entrypoint)
            sizes = all_gather_object(n)
            if len(set(sizes)) != 1:
                raise TaskError(
                    f"the ranks of client {self.client.name!r} loaded different data: "
                    f"{len(sizes)} ranks saw {sizes} samples; train_dataset must return the "
                    "client's whole data on every rank (fedkube shards it)"
                )
        return self._model, self._ddp, self._data

    # -- one round --------------------------------------------------------------------------

    def train_round(self, work: Work) -> None:
        """Train round ``work.base_round + 1`` from that base round's global model."""
        if self._sharded is not None:
            self._sharded.train_round(work)
            return
        r = work.base_round + 1
        ctx = self.ctx(r)
        model, ddp, data = self._prepare(ctx)
        base = self._download_global(work) if self.dist.is_leader else None
        state = broadcast_state_dict(base, device=ctx.device)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise TaskError(
                f"round {work.base_round}'s global model does not fit the model "
                f"{self.spec.task.entrypoint}.build_model makes: {e}"
            ) from e
        del state
        mu = self.spec.strategy.proximal_mu
        if mu:  # FedProx: anchored on this round's global, on every rank
            ctx = replace(ctx, proximal=ProximalTerm.snapshot(model, mu))
        variates: tuple[Tensors, Tensors] | None = None
        sgd = LocalSGD(lr=1.0)
        if self.spec.strategy.name == "scaffold":  # SCAFFOLD: c - c_i, on every rank
            sgd = local_sgd(self.task, ctx)  # before training: fail fast
            variates = self._read_variates(work, base, ctx)
            ctx = replace(ctx, scaffold=ControlCorrection.snapshot(model, *variates))
        _seed_everything(derive_seed(self.spec.seed, "train", r, self.client.name, self.dist.rank))
        loader = train_loader(
            data,
            batch_size=global_batch_size(self.task, ctx),
            ctx=ctx,
            shuffle_seed=derive_seed(self.spec.seed, "shuffle", r, self.client.name),
        )
        started = time.monotonic()
        metrics = self.task.train(ddp, loader, ctx)
        seconds = time.monotonic() - started
        if ctx.proximal is not None:
            ctx.proximal.require_used(self.spec.task.entrypoint)
        steps = self._group_steps(ctx.scaffold, r)
        self._check_identical(model, r)
        group_metrics = _mean_metrics(all_gather_object(_float_metrics(metrics)))
        if self.dist.is_leader:
            if base is None:
                raise RuntimeError("rank 0 lost the base model")  # unreachable: set above
            num_samples = _length(data, self.spec.task.entrypoint)
            extra: Tensors = {}
            if variates is not None:
                extra = self._step_variate(r, model, base, variates, steps=steps, sgd=sgd)
            self._upload(work, model, base, num_samples, group_metrics, seconds, extra=extra)

    def _read_variates(
        self, work: Work, base: Mapping[str, torch.Tensor] | None, ctx: TaskContext
    ) -> tuple[Tensors, Tensors]:
        """SCAFFOLD's ``(c, c_i)`` for this round on every rank: rank 0 reads and checks them
        (``fedcore.variates``) and broadcasts them."""
        both: Tensors | None = None
        if self.dist.is_leader:
            if base is None or self.commit_verifier is None:
                raise FedcoreError("rank 0 of a scaffold client needs the aggregator's public key")
            store, model = self._store(), template_of(base)
            record = read_round_record(
                store.get_bytes(layout.round_record_key(work.base_round)),
                work.base_round,
                self.commit_verifier,
            )
            server = read_server_variate(store, record, model, self.workdir)
            own = read_client_variate(
                store, self.client.name, ctx.round, self.commit_verifier, model, self.workdir
            )
            both = {_SERVER + k: v for k, v in server.items()}
            both.update({_OWN + k: v for k, v in own.items()})
        got = broadcast_state_dict(both, device=ctx.device)
        server = {k.removeprefix(_SERVER): v for k, v in got.items() if k.startswith(_SERVER)}
        own = {k.removeprefix(_OWN): v for k, v in got.items() if k.startswith(_OWN)}
        return server, own

    def _group_steps(self, correction: ControlCorrection | None, r: int) -> int:
        """SCAFFOLD's ``K``: the optimizer steps the group made (the same on every rank)."""
        if correction is None:
            return 0
        correction.require_used(self.spec.task.entrypoint)
        counts = all_gather_object(correction.steps)
        if len(set(counts)) != 1:
            raise TaskError(
                f"in round {r} the ranks of client {self.client.name!r} computed "
                f"ctx.scaffold(model) {counts} times; every rank must call it once per "
                "optimizer step, so all ranks count the same steps"
            )
        return int(counts[0])

    def _step_variate(
        self,
        r: int,
        model: nn.Module,
        base: Mapping[str, torch.Tensor],
        variates: tuple[Tensors, Tensors],
        *,
        steps: int,
        sgd: LocalSGD,
    ) -> Tensors:
        """Compute and store ``c_i+`` (before the manifest: ``fedcore.variates``); return
        ``Δc_i``, the tensors the update carries besides the model delta."""
        server, own = ({k: v.cpu() for k, v in t.items()} for t in variates)
        local = {name: t.detach().cpu() for name, t in model.state_dict().items()}
        new, change = next_variate(
            base, local, server, own, steps=steps, sgd=sgd, trainable=trainable_names(model)
        )
        write_client_variate(self._store(), self.client.name, r, own, new, self.workdir)
        log.info("round %d: control variate stepped over %d local steps (%s)", r, steps, sgd)
        return change

    def _download_global(self, work: Work) -> dict[str, torch.Tensor]:
        store = self._store()
        key = layout.global_key(work.base_round)
        path = self.workdir / f"global-{work.base_round:06d}.safetensors"
        try:
            got = store.get_file(key, path)
            if got != work.base_sha256:
                raise RoundProtocolError(
                    f"{store.uri(key)} has sha256 {got[:12]}..., but round "
                    f"{work.base_round}'s record names {work.base_sha256[:12]}..."
                )
            return load_weights(path)
        finally:
            path.unlink(missing_ok=True)

    def _check_identical(self, model: nn.Module, r: int) -> None:
        """DDP keeps parameters equal on every rank; if they are not, the update would be
        one rank's accident, so the group fails instead of uploading it."""
        digest = _parameters_digest(model)
        log.info("round %d trained; parameters sha256 %s", r, digest)
        digests = all_gather_object(digest)
        if len(set(digests)) != 1:
            raise RoundProtocolError(
                f"after round {r} the ranks of client {self.client.name!r} hold different "
                f"parameters ({digests}); the task must train the model it is given (the DDP "
                "wrapper), not a copy"
            )

    def _upload(
        self,
        work: Work,
        model: nn.Module,
        base: Mapping[str, torch.Tensor],
        num_samples: int,
        metrics: dict[str, float],
        seconds: float,
        *,
        extra: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        store = self._store()
        r = work.base_round + 1
        local = {name: t.detach().cpu() for name, t in model.state_dict().items()}
        try:
            wire_dtype = self.options.wire_dtype
            if wire_dtype == torch.int8:
                update = quantise_update(delta(local, base))
            else:
                update = delta(local, base, wire_dtype=wire_dtype)
        except ValueError as e:
            raise TaskError(f"cannot make the update of round {r}: {e}") from e
        update.update(extra or {})  # SCAFFOLD's variate delta, in its own dtype
        path = self.workdir / f"update-{r:06d}.safetensors"
        save_weights(path, update, update_metadata(r, self.client.name))
        floats = [t.dtype for t in update.values() if t.dtype in FLOAT_DTYPES]
        wire = self.options.wire_dtype or (floats[0] if floats else torch.float32)
        manifest = layout.UpdateManifest(
            client=self.client.name,
            round=r,
            base_round=work.base_round,
            base_sha256=work.base_sha256,
            num_samples=num_samples,
            metrics=fit_metrics(
                {**metrics, "samples": float(num_samples), "train_seconds": seconds}
            ),
            update_sha256=sha256_file(path),
            update_bytes=path.stat().st_size,
            dtype=dtype_name(wire),
        )
        if self.signing_key is not None:
            manifest = sign_manifest(manifest, self.signing_key)
        try:
            store.put_file(layout.update_key(r, self.client.name), path)
            try:
                # The manifest commits the update: written last, exactly once.
                store.put_bytes(
                    layout.manifest_key(r, self.client.name), manifest.to_json(), if_absent=True
                )
            except ObjectExists:
                log.warning("round %d: a manifest was already in the store; kept it", r)
        finally:
            path.unlink(missing_ok=True)
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(manifest.metrics.items()))
        log.info("round %d: uploaded update (%d samples) %s", r, num_samples, shown)

    def _store(self) -> ObjectStore:
        if self.store is None:
            raise FedcoreError("rank 0 of a client group needs the store; none was given")
        return self.store


def run_client(
    job: FederatedJob,
    client_name: str,
    store: ObjectStore | None,
    signing_key: SigningKey | None,
    commit_verifier: CommitVerifier | None,
    *,
    workdir: Path | None = None,
) -> int:
    """One rank's round loop until the job is finished; returns the rounds it trained.

    Joins the DDP group first (``init_distributed``, idempotent). Only rank 0 uses ``store``,
    ``signing_key`` and ``commit_verifier`` (the aggregator's public key: a round counts only
    once its record verifies); the other ranks may pass None. ``signing_key`` None uploads
    unsigned manifests, which an aggregator with keys rejects (tests only).
    """
    client = job.spec.client(client_name)
    options = ClientOptions.from_config(
        job.spec.task_config_for(client_name), job.spec.strategy.update_dtype
    )
    dist_ctx = init_distributed(want_gpu=client.gpu, num_threads=options.num_threads)
    if dist_ctx.is_leader and (store is None or commit_verifier is None):
        raise FedcoreError(
            f"rank 0 of client {client_name!r} needs the store and the aggregator's public "
            "key; one was not given"
        )
    if options.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    with tempfile.TemporaryDirectory(prefix=f"fedkube-{client_name}-") as tmp:
        rank = ClientRank(
            job, client, dist_ctx, store, signing_key, workdir or Path(tmp), commit_verifier
        )
        watcher = (
            RoundWatcher(store, client_name, commit_verifier)
            if store is not None and commit_verifier is not None and dist_ctx.is_leader
            else None
        )
        backoff = Backoff(
            high=LOCAL_POLL_MAX_SECONDS if getattr(store, "local_reads", False) else None
        )
        trained = 0
        while True:
            # A plain tuple: the decision must unpickle the same in every rank's __main__.
            mine = _poll(watcher).as_tuple() if watcher is not None else None
            work = Work(*broadcast_object(mine))
            if work.kind == "finish":
                log.info("the job is finished; %d round(s) trained by this group", trained)
                return trained
            if work.kind == "wait":
                if watcher is not None:
                    time.sleep(backoff.next())
                continue
            rank.train_round(work)
            trained += 1
            backoff.reset()


def _poll(watcher: RoundWatcher) -> Work:
    try:
        return watcher.poll()
    except StoreUnavailable as e:
        # Worth waiting out: the group stays up and polls again.
        log.warning("the store is unavailable (%s); polling again", e)
        return WAIT
    except ObjectNotFound as e:
        # A probe raced a commit in progress; the next poll sees it whole.
        log.debug("poll raced the store: %s", e)
        return WAIT


# ---- helpers ----------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))


def _length(data: Any, entrypoint: str) -> int:
    try:
        n = len(data)
    except TypeError as e:
        raise TaskError(
            f"{entrypoint}.train_dataset returned a {type(data).__name__}, which has no len(); "
            "return a map-style torch Dataset"
        ) from e
    if n < 1:
        raise TaskError(f"{entrypoint}.train_dataset is empty; a client needs data to train on")
    return int(n)


def _parameters_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _float_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TaskError(f"task.train must return a dict of metrics, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[f"train_{key}"] = float(value)
        except (TypeError, ValueError) as e:
            raise TaskError(f"task.train returned metric {key!r} = {value!r}, not a number") from e
    return out


def _mean_metrics(per_rank: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean over ranks of each metric every rank reported; non-finite values are dropped
    (a manifest cannot carry NaN, and the aggregator judges the weights anyway)."""
    keys = set(per_rank[0]).intersection(*per_rank[1:]) if per_rank else set()
    out: dict[str, float] = {}
    for key in sorted(keys):
        value = sum(m[key] for m in per_rank) / len(per_rank)
        if math.isfinite(value):
            out[key] = value
        else:
            log.warning("metric %s is %s; left out of the manifest", key, value)
    return out


# ---- processes: the pod's launcher and each rank's entry point ---------------------------------


@dataclass(frozen=True)
class PodEnv:
    """The operator's torchrun variables for one pod of a client group, checked."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], client: ClientSpec) -> PodEnv:
        """``PET_*`` variables, defaulting to the spec (a one-pod group on this host)."""

        def number(name: str, default: int | None, low: int) -> int:
            raw = environ.get(name, "")
            if raw == "":
                if default is None:
                    raise LaunchError(
                        f"{name} is not set; a client group of {client.replicas} pods needs "
                        "PET_MASTER_ADDR and PET_MASTER_PORT (rank 0's pod) on every pod"
                    )
                return default
            return int_var(environ, name, low=low)

        nnodes = number("PET_NNODES", client.replicas, 1)
        nproc = number("PET_NPROC_PER_NODE", client.procs_per_replica, 1)
        if (nnodes, nproc) != (client.replicas, client.procs_per_replica):
            raise LaunchError(
                f"PET_NNODES={nnodes} x PET_NPROC_PER_NODE={nproc} disagrees with client "
                f"{client.name!r}: replicas={client.replicas}, procsPerReplica="
                f"{client.procs_per_replica}; the pods must be built from the same spec"
            )
        node_rank = number("PET_NODE_RANK", 0 if nnodes == 1 else None, 0)
        if node_rank >= nnodes:
            raise LaunchError(f"PET_NODE_RANK={node_rank} is not below PET_NNODES={nnodes}")
        single = nnodes == 1
        addr = environ.get("PET_MASTER_ADDR", "").strip() or ("127.0.0.1" if single else "")
        if not addr:
            number("PET_MASTER_ADDR", None, 0)  # raises the "not set" error
        port = number("PET_MASTER_PORT", _free_port() if single else None, 1)
        if port > 65535:
            raise LaunchError(f"PET_MASTER_PORT={port} is not a TCP port (1..65535)")
        return cls(nnodes, nproc, node_rank, addr, port)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def launch_client_group(job_path: str | os.PathLike[str], client: str) -> int:
    """``fedkube client``: run this pod's share of the client's DDP group; the exit code.

    Starts ``PET_NPROC_PER_NODE`` processes of ``python -m fedcore.client`` with torch's
    elastic launcher (static rendezvous at ``PET_MASTER_ADDR:PET_MASTER_PORT``, this pod as
    node ``PET_NODE_RANK`` of ``PET_NNODES``; no restarts: the operator restarts the whole
    group). Returns 0 when every process finished the job, else ``group_exit_code``.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _configure_logging(f"{client} pod")
    path = Path(job_path).resolve()
    job = load_job(path)
    spec = job.spec.client(client)
    pod = PodEnv.from_environ(os.environ, spec)
    log.info(
        "starting %d process(es) as pod %d of %d of client %r (rendezvous %s:%d)",
        pod.nproc_per_node,
        pod.node_rank,
        pod.nnodes,
        client,
        pod.master_addr,
        pod.master_port,
    )
    _wait_for_host(pod.master_addr, RDZV_TIMEOUT_SECONDS)
    config = LaunchConfig(
        min_nodes=pod.nnodes,
        max_nodes=pod.nnodes,
        nproc_per_node=pod.nproc_per_node,
        run_id=f"{job.name}-{client}",
        role=client,
        rdzv_backend="static",
        rdzv_endpoint=f"{pod.master_addr}:{pod.master_port}",
        rdzv_configs={"rank": pod.node_rank, "timeout": RDZV_TIMEOUT_SECONDS},
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    argv = ["-u", "-m", CLIENT_MODULE, "--job", str(path), "--client", client]
    try:
        elastic_launch(config, sys.executable)(*argv)
    except ChildFailedError as e:
        log.error("client %r: a process of the group failed:\n%s", client, e.format_msg())  # type: ignore[no-untyped-call]
        return group_exit_code([f.exitcode for f in e.failures.values()])
    except SignalException as e:
        log.warning("client %r: stopped by signal %s", client, e.sigval.name)
        return 128 + int(e.sigval)
    return EXIT_OK


def group_exit_code(failures: Sequence[int]) -> int:
    """The pod's exit code from its failed processes' codes: ``EXIT_CONFIG`` when one of them
    stopped on a configuration error (the same job fails the same way again, so no restart can
    help; the others may just have been stopped by the launcher), else ``EXIT_FAILED``."""
    if EXIT_CONFIG in failures:
        return EXIT_CONFIG
    return EXIT_FAILED


def _wait_for_host(host: str, timeout: float) -> None:
    """Wait until ``host`` resolves. In a cluster, rank 0's name (a headless Service record)
    appears only once its pod has an address, possibly after this pod started."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except socket.gaierror as e:
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"PET_MASTER_ADDR={host!r} did not resolve within {timeout:.0f} s ({e}); "
                    "is the client's headless Service there, and its first pod running?"
                ) from e
            log.info("waiting for %s to resolve (%s)", host, e)
            time.sleep(1.0)


def _configure_logging(who: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {who} %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedcore.client --job FILE --client NAME``: one rank, under the launcher."""
    parser = argparse.ArgumentParser(prog=f"python -m {CLIENT_MODULE}", description=__doc__)
    parser.add_argument("--job", type=Path, required=True, metavar="FILE")
    parser.add_argument("--client", required=True, metavar="NAME")
    args = parser.parse_args(argv)
    _configure_logging(f"{args.client} rank {os.environ.get('RANK', '0')}")
    stacks_on_sigusr1()  # stacks to the log on demand
    # The launcher stops workers with SIGTERM; exit through finally so the group is left.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        job = load_job(args.job)
        spec = job.spec.client(args.client)
        options = ClientOptions.from_config(
            job.spec.task_config_for(args.client), job.spec.strategy.update_dtype
        )
        dist_ctx = init_distributed(want_gpu=spec.gpu, num_threads=options.num_threads)
        every_rank = spec.parallelism.mode == "fsdp"  # each rank reads and writes its share
        store = (
            open_job_store(job, role=Role.for_client(args.client))
            if dist_ctx.is_leader or every_rank
            else None
        )
        key = key_from_env() if dist_ctx.is_leader else None
        verifier = verifier_from_env() if dist_ctx.is_leader else None
        run_client(job, args.client, store, key, verifier)
        return EXIT_OK
    except FedcoreError as e:
        log.error("%s", e)
        return exit_code_for(e)
    except Exception:
        log.exception("client %r failed", args.client)
        return EXIT_FAILED
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
