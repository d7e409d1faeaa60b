"""init_distributed and the collectives: env checks, backend choice, real gloo broadcasts."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load, save

from fedcore import distributed
from fedcore.distributed import (
    DistEnv,
    LaunchError,
    _buckets,
    broadcast_state_dict,
    choose_backend,
    init_distributed,
    shutdown_distributed,
)

GOOD = {
    "RANK": "1",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "alpha-0.alpha",
    "MASTER_PORT": "29500",
}


# ---- the torchrun environment ------------------------------------------------------------------


def test_no_launcher_variables_mean_a_group_of_one() -> None:
    env = DistEnv.from_environ({})

    assert (env.rank, env.world_size, env.launched) == (0, 1, False)


def test_launcher_variables_are_parsed() -> None:
    env = DistEnv.from_environ(GOOD)

    assert env == DistEnv(1, 1, 4, 2, "alpha-0.alpha", 29500, launched=True)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"RANK": None}, "RANK not set"),
        ({"MASTER_ADDR": None, "MASTER_PORT": None}, "MASTER_ADDR, MASTER_PORT not set"),
        ({"RANK": "one"}, "RANK='one' is not an integer"),
        ({"RANK": "4"}, "RANK=4 is not below WORLD_SIZE=4"),
        ({"RANK": "-1"}, "RANK=-1 must be >= 0"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
        ({"MASTER_ADDR": "a b"}, "MASTER_ADDR='a b' is not a host name or IP"),
    ],
    ids=lambda v: str(v),
)
def test_a_bad_environment_names_the_variable(changes: dict[str, Any], message: str) -> None:
    env = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}

    with pytest.raises(LaunchError) as caught:
        DistEnv.from_environ(env)

    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("want_gpu", "cuda", "override", "expected"),
    [
        (False, False, None, "gloo"),
        (False, True, None, "gloo"),
        (True, True, None, "nccl"),
        (True, False, None, "gloo"),
        (True, True, "gloo", "gloo"),
        (False, True, "nccl", "nccl"),
    ],
    ids=[
        "cpu job on a cpu node: gloo",
        "cpu job on a gpu node: gloo",
        "gpu job on a gpu node: nccl",
        "gpu job without cuda: gloo",
        "override to gloo wins",
        "override to nccl wins",
    ],
)
def test_backend_choice(want_gpu: bool, cuda: bool, override: Any, expected: str) -> None:
    assert choose_backend(want_gpu=want_gpu, cuda_available=cuda, override=override) == expected


def test_nccl_override_without_cuda_is_refused() -> None:
    with pytest.raises(LaunchError, match="FEDKUBE_DIST_BACKEND=nccl but CUDA is not available"):
        choose_backend(want_gpu=False, cuda_available=False, override="nccl")


def test_gpu_job_on_a_cpu_node_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedcore.distributed"):
        choose_backend(want_gpu=True, cuda_available=False, override=None)

    assert "CUDA is not available" in caplog.text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FEDKUBE_DIST_BACKEND", "mpi", "must be 'gloo' or 'nccl'"),
        ("FEDKUBE_DIST_TIMEOUT_SECONDS", "soon", "must be seconds > 0"),
        ("FEDKUBE_DIST_TIMEOUT_SECONDS", "-5", "must be seconds > 0"),
        ("FEDKUBE_NUM_THREADS", "0", "FEDKUBE_NUM_THREADS=0 must be >= 1"),
    ],
)
def test_bad_overrides_are_refused(name: str, value: str, message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        distributed._read_overrides({name: value})


# ---- joining a group of one (in this process) ----------------------------------------------------


@pytest.fixture
def clean_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No launcher variables, and the process's torch state restored afterwards."""
    for name in (*distributed.REQUIRED_VARS, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name in (distributed.ENV_BACKEND, distributed.ENV_TIMEOUT, distributed.ENV_THREADS):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    shutdown_distributed()
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("clean_process")
def test_init_without_a_launcher_joins_a_group_of_one_once() -> None:
    first = init_distributed()
    second = init_distributed()

    assert first is second
    assert (first.rank, first.world_size, first.backend, first.device.type) == (0, 1, "gloo", "cpu")
    assert dist.is_initialized()
    assert torch.get_num_threads() == 1


@pytest.mark.usefixtures("clean_process")
def test_shutdown_is_idempotent_and_allows_joining_again() -> None:
    init_distributed()

    shutdown_distributed()
    shutdown_distributed()

    assert not dist.is_initialized()
    assert init_distributed().world_size == 1


@pytest.mark.usefixtures("clean_process")
def test_env_overrides_apply_and_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FEDKUBE_NUM_THREADS", "2")

    with caplog.at_level(logging.INFO, logger="fedcore.distributed"):
        init_distributed(num_threads=1)

    assert torch.get_num_threads() == 2
    assert "environment override: FEDKUBE_NUM_THREADS=2" in caplog.text


# ---- broadcasting a state dict -------------------------------------------------------------------


def test_buckets_split_by_dtype_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "BROADCAST_BUCKET_BYTES", 100)
    f, i = torch.float32, torch.int64
    layout = [("a", (10,), f), ("b", (10,), f), ("c", (30,), f), ("d", (2,), i), ("e", (), f)]

    buckets = _buckets(layout)

    assert [[name for name, _, _ in b] for b in buckets] == [["a", "b"], ["c"], ["d"], ["e"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sample_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(40, 30, generator=gen),
        "layer.bias": torch.randn(40, generator=gen),
        "bn.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(5, generator=gen).to(torch.bfloat16),
        "empty": torch.zeros(0, 3),
        "mask": torch.tensor([True, False]),
    }


def _broadcast_worker(rank: int, port: int, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        distributed.BROADCAST_BUCKET_BYTES = 1024  # several buckets for the weight
        got = broadcast_state_dict(
            sample_state() if rank == 0 else None, device=torch.device("cpu")
        )
        queue.put((rank, list(got), save(got)))  # bytes: tensors must outlive this process
    finally:
        dist.destroy_process_group()


def test_broadcast_state_dict_gives_every_rank_rank_zeros_tensors() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()

    mp.spawn(_broadcast_worker, args=(port, queue), nprocs=2)  # type: ignore[attr-defined,no-untyped-call]
    results = {rank: (names, load(data)) for rank, names, data in (queue.get() for _ in range(2))}

    want = sample_state()
    for rank in (0, 1):
        names, got = results[rank]
        assert names == list(want)
        for name, tensor in want.items():
            assert got[name].dtype == tensor.dtype, name
            assert torch.equal(got[name], tensor), name
