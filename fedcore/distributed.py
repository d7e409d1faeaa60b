"""One place that turns a torchrun-style environment into a working process group.

Every rank of a client's DDP group runs ``fedcore.client`` under torch's elastic launcher,
which exports ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
``init_distributed`` reads and checks them (a wrong value names the variable and the fix
instead of hanging in a rendezvous), picks the backend (NCCL when the job asked for GPUs
and CUDA is present, gloo otherwise), pins the rank's GPU and its CPU threads, and joins
the group. Started without a launcher (no variables at all) it makes a group of one, so
the client code has a single path.

The few knobs fedkube reads from the environment are read here, and every one that is set
is logged as an override:

* ``FEDKUBE_DIST_BACKEND``: ``gloo`` or ``nccl``, instead of the automatic choice.
* ``FEDKUBE_DIST_TIMEOUT_SECONDS``: how long a collective may wait (default 1800).
* ``FEDKUBE_NUM_THREADS``: CPU threads per process (default: the task's ``numThreads``,
  else 1 on CPU: a laptop run has several processes per core already).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist

from fedcore.errors import FedcoreError

log = logging.getLogger(__name__)

Backend = Literal["gloo", "nccl"]

REQUIRED_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What the elastic launcher (torchrun) exports to every worker."""

ENV_BACKEND = "FEDKUBE_DIST_BACKEND"
ENV_TIMEOUT = "FEDKUBE_DIST_TIMEOUT_SECONDS"
ENV_THREADS = "FEDKUBE_NUM_THREADS"

DEFAULT_TIMEOUT_SECONDS = 1800.0
"""A collective waits this long for the slowest rank before the group fails. The client's
ranks meet every few seconds even while waiting for a round, so this only bounds a stuck
training step or a huge model's broadcast."""

BROADCAST_BUCKET_BYTES = 64 << 20
"""Tensors are broadcast in flat buckets of about this size: few collectives for models
with many small tensors, bounded extra memory for large ones."""


class LaunchError(FedcoreError):
    """The process environment cannot form the DDP group (bad or missing torchrun variables)."""


@dataclass(frozen=True)
class DistEnv:
    """The torchrun variables of one worker, checked."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    launched: bool
    """False when no launcher variables were set: a group of one, built in-process."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> DistEnv:
        """Parse the launcher's variables; ``LaunchError`` names each one that is wrong."""
        present = [name for name in REQUIRED_VARS if environ.get(name, "") != ""]
        if not present:
            return cls(0, 0, 1, 1, "127.0.0.1", 0, launched=False)
        missing = [name for name in REQUIRED_VARS if name not in present]
        if missing:
            raise LaunchError(
                f"torchrun environment is incomplete: {', '.join(missing)} not set (found "
                f"{', '.join(present)}); start the client with `fedkube client` or torchrun, "
                "which set all of " + ", ".join(REQUIRED_VARS)
            )
        rank = int_var(environ, "RANK", low=0)
        world_size = int_var(environ, "WORLD_SIZE", low=1)
        local_rank = int_var(environ, "LOCAL_RANK", low=0)
        local_world_size = (
            int_var(environ, "LOCAL_WORLD_SIZE", low=1)
            if environ.get("LOCAL_WORLD_SIZE")
            else world_size
        )
        port = int_var(environ, "MASTER_PORT", low=1)
        if rank >= world_size:
            raise LaunchError(
                f"RANK={rank} is not below WORLD_SIZE={world_size}; ranks are 0..{world_size - 1}"
            )
        if local_rank >= local_world_size:
            raise LaunchError(
                f"LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world_size}"
            )
        if port > 65535:
            raise LaunchError(f"MASTER_PORT={port} is not a TCP port (1..65535)")
        addr = environ["MASTER_ADDR"].strip()
        if not addr or any(c.isspace() for c in addr):
            raise LaunchError(f"MASTER_ADDR={environ['MASTER_ADDR']!r} is not a host name or IP")
        return cls(rank, local_rank, world_size, local_world_size, addr, port, launched=True)


def int_var(environ: Mapping[str, str], name: str, *, low: int) -> int:
    """``environ[name]`` as an integer >= ``low``; ``LaunchError`` naming the variable."""
    raw = environ[name]
    try:
        value = int(raw)
    except ValueError:
        raise LaunchError(f"{name}={raw!r} is not an integer") from None
    if value < low:
        raise LaunchError(f"{name}={value} must be >= {low}")
    return value


@dataclass(frozen=True)
class DistContext:
    """The joined group, as this process sees it."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    backend: Backend
    device: torch.device
    """``cuda:<LOCAL_RANK>`` under NCCL, else the CPU."""
    launched: bool

    @property
    def is_leader(self) -> bool:
        """Rank 0: the one rank that talks to the store."""
        return self.rank == 0


_current: DistContext | None = None


@dataclass(frozen=True)
class _Overrides:
    backend: Backend | None
    timeout_seconds: float | None
    num_threads: int | None


def _read_overrides(environ: Mapping[str, str]) -> _Overrides:
    backend = environ.get(ENV_BACKEND) or None
    if backend is not None and backend not in ("gloo", "nccl"):
        raise LaunchError(f"{ENV_BACKEND}={backend!r} must be 'gloo' or 'nccl' (or unset)")
    timeout: float | None = None
    if environ.get(ENV_TIMEOUT):
        try:
            timeout = float(environ[ENV_TIMEOUT])
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise LaunchError(f"{ENV_TIMEOUT}={environ[ENV_TIMEOUT]!r} must be seconds > 0")
    threads = int_var(environ, ENV_THREADS, low=1) if environ.get(ENV_THREADS) else None
    for name in (ENV_BACKEND, ENV_TIMEOUT, ENV_THREADS):
        if environ.get(name):
            log.info("environment override: %s=%s", name, environ[name])
    return _Overrides(backend, timeout, threads)  # type: ignore[arg-type]


def choose_backend(*, want_gpu: bool, cuda_available: bool, override: Backend | None) -> Backend:
    """NCCL when GPUs were asked for and CUDA is present, else gloo; ``override`` wins."""
    if override is not None:
        if override == "nccl" and not cuda_available:
            raise LaunchError(
                f"{ENV_BACKEND}=nccl but CUDA is not available in this process; "
                "unset it or run on a GPU node"
            )
        return override
    if want_gpu and not cuda_available:
        log.warning(
            "the client asked for GPUs (gpu: true) but CUDA is not available here: "
            "training on CPU with gloo"
        )
    return "nccl" if want_gpu and cuda_available else "gloo"


def init_distributed(
    *,
    want_gpu: bool = False,
    num_threads: int | None = None,
) -> DistContext:
    """Join this process's DDP group (idempotent: a second call returns the same context).

    ``want_gpu`` is the client's ``gpu`` field; ``num_threads`` the task's ``numThreads``.
    Raises ``LaunchError`` for a malformed environment; the rendezvous itself may raise
    torch's ``DistStoreError`` after the timeout when peers never show up.
    """
    global _current
    if _current is not None and dist.is_initialized():
        return _current
    env = DistEnv.from_environ(os.environ)
    overrides = _read_overrides(os.environ)
    backend = choose_backend(
        want_gpu=want_gpu, cuda_available=torch.cuda.is_available(), override=overrides.backend
    )
    device = torch.device("cpu")
    if backend == "nccl":
        count = torch.cuda.device_count()
        if env.local_rank >= count:
            raise LaunchError(
                f"LOCAL_RANK={env.local_rank} but this process sees {count} GPU(s); give the pod "
                "one GPU per process (procsPerReplica = nvidia.com/gpu) or fix CUDA_VISIBLE_DEVICES"
            )
        # cuBLAS is only deterministic with a fixed workspace, which must be set before its
        # first use (see torch.use_deterministic_algorithms).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    threads = overrides.num_threads or num_threads or (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    timeout = timedelta(seconds=overrides.timeout_seconds or DEFAULT_TIMEOUT_SECONDS)
    if env.launched:
        # env:// also picks up the launcher's own store (TORCHELASTIC_USE_AGENT_STORE).
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timeout,
        )
    else:
        dist.init_process_group(
            backend=backend,
            store=dist.HashStore(),  # type: ignore[attr-defined]
            rank=0,
            world_size=1,
            timeout=timeout,
        )
    _current = DistContext(
        rank=env.rank,
        local_rank=env.local_rank,
        world_size=env.world_size,
        local_world_size=env.local_world_size,
        backend=backend,
        device=device,
        launched=env.launched,
    )
    log.info(
        "joined DDP group: rank %d/%d (local %d/%d), backend %s, device %s, %d CPU thread(s)",
        env.rank,
        env.world_size,
        env.local_rank,
        env.local_world_size,
        backend,
        device,
        torch.get_num_threads(),
    )
    return _current


def shutdown_distributed() -> None:
    """Leave the group (idempotent). Every rank calls it on the way out, success or not."""
    global _current
    _current = None
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer that died first can make teardown fail; we are exiting anyway
            log.debug("destroy_process_group failed", exc_info=True)


# ---- collectives on Python objects and state dicts ---------------------------------------------


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled: only for small, trusted values)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_state_dict(
    tensors: Mapping[str, torch.Tensor] | None, *, device: torch.device, src: int = 0
) -> dict[str, torch.Tensor]:
    """Rank ``src``'s ``name -> tensor`` mapping on every rank, on ``device``.

    Rank ``src`` passes the tensors (e.g. the global model it downloaded); the others pass
    None. Names, shapes and dtypes go first as one small object, then the data in flat
    buckets of ``BROADCAST_BUCKET_BYTES`` per dtype.
    """
    rank = dist.get_rank()
    if rank == src:
        if tensors is None:
            raise ValueError("the source rank of broadcast_state_dict must pass its tensors")
        layout = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    else:
        layout = []
    layout = broadcast_object(layout, src=src)
    out: dict[str, torch.Tensor] = {}
    for bucket in _buckets(layout):
        dtype = bucket[0][2]
        numel = sum(math.prod(shape) for _, shape, _ in bucket)
        if rank == src and tensors is not None:
            flat = torch.cat(
                [tensors[name].detach().reshape(-1).to(device) for name, _, _ in bucket]
            )
        else:
            flat = torch.empty(numel, dtype=dtype, device=device)
        dist.broadcast(flat, src=src)
        offset = 0
        for name, shape, _ in bucket:
            n = math.prod(shape)
            out[name] = flat[offset : offset + n].view(shape).clone()
            offset += n
    return out


_Entry = tuple[str, tuple[int, ...], torch.dtype]


def _buckets(layout: Sequence[_Entry]) -> list[list[_Entry]]:
    """Consecutive runs of one dtype, cut at about ``BROADCAST_BUCKET_BYTES``."""
    buckets: list[list[_Entry]] = []
    size = 0
    for entry in layout:
        nbytes = math.prod(entry[1]) * entry[2].itemsize
        if not buckets or buckets[-1][0][2] != entry[2] or size + nbytes > BROADCAST_BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append(entry)
        size += nbytes
    return buckets
