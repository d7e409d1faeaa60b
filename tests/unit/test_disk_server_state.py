"""The disk accumulator for strategies with server state (FedAvgM, FedOpt) and for DP-FedAvg:
bit for bit the in-memory results over several rounds, resumed from the persisted state or
not; a step that fails half-way leaves nothing half-written; memory does not hold the model.
"""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedcore.strategies import DPFedAvg, FedAdagrad, FedAdam, FedAvgM, FedYogi, Strategy
from fedcore.strategies.disk_accumulator import SLICE_ELEMENTS
from fedcore.strategies.dp_noise import SLICE_ELEMENTS as NOISE_SLICE
from fedcore.strategies.dp_noise import NoiseKey
from fedcore.strategies.dpfedavg import AdaptiveClipping
from fedcore.weights import (
    InMemoryWeights,
    Tensors,
    WeightsReader,
    open_weights,
    save_weights,
    template_of,
)

SPANNING = SLICE_ELEMENTS + 3 * (1 << 18) + 7
"""Elements of a tensor spanning two slices, whose last chunk is a short one."""
ROUNDS = 3
CLIENTS = 3
KEY = NoiseKey(bytes(range(32)))


def model(seed: int, scale: float = 1.0) -> Tensors:
    """Every dtype these strategies take: floats of four widths (two across slices),
    integers, a mask, empty tensors."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return {
        "big": normal(SPANNING),
        "big_half": normal(SLICE_ELEMENTS + 5, dtype=torch.float16),
        "conv.weight": normal(3, 5, 7),
        "bf16": normal(300, dtype=torch.bfloat16),
        "wide": normal(1000, dtype=torch.float64),
        "steps": torch.tensor(seed % 5, dtype=torch.int64),
        "mask": torch.zeros(4, dtype=torch.bool),
        "empty": torch.zeros(0, 3),
        "empty_wide": torch.zeros(2, 0, dtype=torch.float64),
    }


Factory = Callable[[], Strategy]
FACTORIES: dict[str, Factory] = {
    "fedavgm": lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
    "fedavgm-adaptive-clip": lambda: FedAvgM(server_momentum=0.5, clip_norm=5.0, clip_quantile=0.5),
    "fedadam": lambda: FedAdam(server_learning_rate=0.05),
    "fedyogi": lambda: FedYogi(server_learning_rate=0.05, beta2=0.9),
    "fedadagrad": lambda: FedAdagrad(server_learning_rate=0.05, tau=1e-2),
    "dpfedavg": lambda: DPFedAvg(noise_multiplier=1.1, clip_norm=5.0),
    "dpfedavg-adaptive": lambda: DPFedAvg(
        noise_multiplier=1.1,
        clip_norm=5.0,
        adaptive=AdaptiveClipping(
            target_unclipped_quantile=0.5, learning_rate=0.2, clipped_count_stddev=1.0
        ),
    ),
}


def write(path: Path, tensors: Tensors, **meta: str | int) -> Path:
    save_weights(path, tensors, meta)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_updates(tmp_path: Path) -> list[list[tuple[Path, int]]]:
    """Each round's client updates (files), different every round."""
    rounds = []
    for r in range(1, ROUNDS + 1):
        rounds.append(
            [
                (
                    write(tmp_path / f"u{r}-{k}.safetensors", model(10 * r + k, 1e-2)),
                    100 + 37 * k,
                )
                for k in range(CLIENTS)
            ]
        )
    return rounds


def in_disk_mode(strategy: Strategy, directory: Path) -> Strategy:
    strategy.accumulator = "disk"
    strategy.accumulator_dir = directory
    return strategy


def one_round(
    strategy: Strategy, r: int, base: Path, updates: list[tuple[Path, int]], out: Path
) -> tuple[Path, Path | None]:
    """Round ``r`` through files, as the aggregator runs it: the new model's path and the
    state file's (None without state)."""
    with open_weights(base) as reader:
        strategy.begin_round(reader.template())
    if isinstance(strategy, DPFedAvg):
        strategy.expected_clients = CLIENTS + 1  # one selected client did not report
    for path, n in updates:
        with open_weights(path) as update:
            strategy.fold(update, n)
    if isinstance(strategy, DPFedAvg):
        strategy.noise_key = KEY.for_round(r, [(p.name, digest(p)) for p, _ in updates])
    new = out / f"global-{r}.safetensors"
    with open_weights(base) as reader:
        assert strategy.finalize_to_file(reader, new, {"kind": "global", "round": r}) == []
    state = out / f"state-{r}.safetensors"
    bad = strategy.save_state(state, {"kind": "state", "round": r})
    assert bad in (None, [])
    return new, (state if bad is not None else None)


def run(
    factory: Factory, tmp_path: Path, label: str, rounds: list[list[tuple[Path, int]]], *,
    disk: bool, resume: bool,
) -> list[tuple[str, str | None]]:  # fmt: skip
    """``ROUNDS`` rounds from ``base.safetensors``: one strategy throughout, or (``resume``)
    a fresh one per round that loads the previous round's state file, as a restarted
    aggregator does. Each round's (model sha256, state sha256)."""
    out = tmp_path / label
    out.mkdir()
    base = tmp_path / "base.safetensors"
    strategy = factory()
    digests: list[tuple[str, str | None]] = []
    state: Path | None = None
    for r, updates in enumerate(rounds, start=1):
        if resume:
            strategy = factory()
            if state is not None:
                if disk:
                    in_disk_mode(strategy, out)  # the aggregator sets the mode first
                strategy.load_state_file(state)
        if disk:
            in_disk_mode(strategy, out)
        base, state = one_round(strategy, r, base, updates, out)
        digests.append((digest(base), digest(state) if state is not None else None))
    return digests


@pytest.mark.parametrize("strategy", sorted(FACTORIES))
def test_disk_mode_gives_the_in_memory_models_and_states_over_rounds_and_resumes(
    tmp_path: Path, strategy: str
) -> None:
    write(tmp_path / "base.safetensors", model(0))
    rounds = make_updates(tmp_path)
    factory = FACTORIES[strategy]

    memory = run(factory, tmp_path, "memory", rounds, disk=False, resume=False)
    memory_resumed = run(factory, tmp_path, "memory-resumed", rounds, disk=False, resume=True)
    disk = run(factory, tmp_path, "disk", rounds, disk=True, resume=False)
    disk_resumed = run(factory, tmp_path, "disk-resumed", rounds, disk=True, resume=True)

    assert len({m for m, _ in memory}) == ROUNDS  # every round moved the model
    assert memory_resumed == memory
    assert disk == memory
    assert disk_resumed == memory


def test_a_state_file_becomes_the_in_memory_state_in_either_mode(tmp_path: Path) -> None:
    write(tmp_path / "base.safetensors", model(0))
    rounds = make_updates(tmp_path)[:1]
    run(FACTORIES["fedadam"], tmp_path, "first", rounds, disk=True, resume=False)
    state_file = tmp_path / "first" / "state-1.safetensors"

    on_disk = in_disk_mode(FedAdam(server_learning_rate=0.05), tmp_path)
    on_disk.load_state_file(state_file)
    in_memory = FedAdam(server_learning_rate=0.05)
    in_memory.load_state_file(state_file)

    with open_weights(state_file) as reader:
        expected = reader.load_all()
    for state in (on_disk.state_dict(), in_memory.state_dict()):
        assert state.keys() == expected.keys()
        assert (
            sorted(k.split("/")[0] for k in state) == ["first_moment"] * 7 + ["second_moment"] * 7
        )
        for key, tensor in expected.items():
            assert torch.equal(state[key], tensor), key


def test_disk_mode_takes_in_memory_state_and_sources(tmp_path: Path) -> None:
    base = model(0)
    previous = model(1, 1e-3)
    state = {
        f"momentum/{n}": t.to(torch.promote_types(t.dtype, torch.float32))
        for n, t in previous.items()
        if t.is_floating_point()
    }
    results = []
    for disk in (False, True):
        strategy = FedAvgM(server_momentum=0.9)
        if disk:
            in_disk_mode(strategy, tmp_path)
        strategy.load_state_dict(dict(state))
        strategy.begin_round(template_of(base))
        for k in range(2):
            strategy.fold(InMemoryWeights(model(k + 2, 1e-2)), 10 + k)
        results.append((strategy.finalize(InMemoryWeights(base)), strategy.state_dict()))

    (memory, memory_state), (disk_model, disk_state) = results
    for a, b in ((memory, disk_model), (memory_state, disk_state)):
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype, name
            assert a[name].shape == b[name].shape, name
            bits_a, bits_b = a[name].view(-1).view(torch.uint8), b[name].view(-1).view(torch.uint8)
            assert torch.equal(bits_a, bits_b), name


class FailingReader(WeightsReader):
    """A base model file whose reads fail after ``good`` slices (a disk error half-way)."""

    def __init__(self, path: Path, good: int) -> None:
        super().__init__(path)
        self.good = good

    def get_flat_slice(self, name: str, start: int, stop: int) -> torch.Tensor:
        if self.good == 0:
            raise OSError(errno.EIO, "injected read error")
        self.good -= 1
        return super().get_flat_slice(name, start, stop)


@pytest.mark.parametrize("strategy", ["fedyogi", "dpfedavg"])
def test_a_step_failing_half_way_leaves_no_file_and_the_previous_state(
    tmp_path: Path, strategy: str
) -> None:
    write(tmp_path / "base.safetensors", model(0))
    rounds = make_updates(tmp_path)[:2]
    expected = run(FACTORIES[strategy], tmp_path, "expected", rounds, disk=False, resume=False)
    out = tmp_path / "disk"
    out.mkdir()
    broken = in_disk_mode(FACTORIES[strategy](), out)
    base, _ = one_round(broken, 1, tmp_path / "base.safetensors", rounds[0], out)
    state_before = broken.state_dict()
    with open_weights(base) as reader:
        broken.begin_round(reader.template())
    for path, n in rounds[1]:
        with open_weights(path) as update:
            broken.fold(update, n)
    if isinstance(broken, DPFedAvg):
        broken.expected_clients = CLIENTS + 1
        broken.noise_key = KEY.for_round(2, [(p.name, digest(p)) for p, _ in rounds[1]])
    before = sorted(p.name for p in out.iterdir())

    with pytest.raises(OSError, match="injected"), FailingReader(base, 3) as failing:
        # 'steps', 'wide' and the first slice of 'big' are out (layout order), then a read fails
        broken.finalize_to_file(failing, out / "global-2.safetensors", {"round": 2})

    assert sorted(p.name for p in out.iterdir()) == before  # no model, no temporary
    after = broken.state_dict()
    assert after.keys() == state_before.keys()
    for key in after:
        assert torch.equal(after[key], state_before[key]), key
    # What the aggregator does then: the round again, its updates folded anew.
    _, state = one_round(broken, 2, base, rounds[1], out)
    assert digest(out / "global-2.safetensors") == expected[1][0]
    assert (digest(state) if state is not None else None) == expected[1][1]


def test_saving_the_state_failing_half_way_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "base.safetensors", model(0))
    out = tmp_path / "disk"
    out.mkdir()
    strategy = in_disk_mode(FACTORIES["fedadam"](), out)
    one_round(strategy, 1, tmp_path / "base.safetensors", make_updates(tmp_path)[0], out)
    (out / "state-1.safetensors").unlink()
    from fedcore import weights_stream

    real = weights_stream.StreamingWeightsWriter.write
    calls = iter(range(3))

    def flaky(self: weights_stream.StreamingWeightsWriter, name: str, values: torch.Tensor) -> None:
        if next(calls, None) is None:
            raise OSError(errno.ENOSPC, "injected: no space left")
        real(self, name, values)

    monkeypatch.setattr(weights_stream.StreamingWeightsWriter, "write", flaky)
    before = sorted(p.name for p in out.iterdir())

    with pytest.raises(OSError, match="injected"):
        strategy.save_state(out / "state-1.safetensors", {"kind": "state", "round": 1})

    assert sorted(p.name for p in out.iterdir()) == before


def test_a_state_file_with_nan_is_refused_slice_by_slice(tmp_path: Path) -> None:
    momentum = torch.zeros(SPANNING)
    momentum[SLICE_ELEMENTS + 1] = float("nan")  # in the second slice
    path = write(tmp_path / "state.safetensors", {"momentum/big": momentum})
    strategy = in_disk_mode(FedAvgM(server_momentum=0.9), tmp_path)

    with pytest.raises(ValueError, match="NaN or inf in momentum/big"):
        strategy.load_state_file(path)


def test_a_state_file_of_another_model_is_refused_at_the_round_start(tmp_path: Path) -> None:
    path = write(tmp_path / "state.safetensors", {"momentum/big": torch.zeros(7)})
    strategy = in_disk_mode(FedAvgM(server_momentum=0.9), tmp_path)
    strategy.load_state_file(path)

    with pytest.raises(ValueError, match="belongs to another model"):
        strategy.begin_round(template_of({"big": torch.zeros(8)}))


def test_an_incomplete_fedopt_state_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "state.safetensors", {"first_moment/w": torch.zeros(3)})
    strategy = in_disk_mode(FedAdam(), tmp_path)

    with pytest.raises(ValueError, match="incomplete"):
        strategy.load_state_file(path)


@pytest.mark.parametrize("disk", [False, True], ids=["memory", "disk"])
def test_alone_is_finite_reads_the_state_by_the_slice_and_changes_nothing(
    tmp_path: Path, disk: bool
) -> None:
    base = {"big": torch.zeros(SPANNING, dtype=torch.float16)}
    strategy = FedAvgM(server_momentum=0.9)
    if disk:
        in_disk_mode(strategy, tmp_path)
    strategy.begin_round(template_of(base))
    strategy.fold(InMemoryWeights({"big": torch.full((SPANNING,), 1e-3)}), 1)
    strategy.finalize(InMemoryWeights(base))
    state = strategy.state_dict()
    strategy.begin_round(template_of(base))
    huge = torch.zeros(SPANNING)
    huge[-1] = 1e6  # past float16's range, in the last slice only

    zero = InMemoryWeights({"big": torch.zeros(SPANNING)})
    assert strategy.alone_is_finite(zero, InMemoryWeights(base))
    assert not strategy.alone_is_finite(InMemoryWeights({"big": huge}), InMemoryWeights(base))
    assert all(torch.equal(t, state[k]) for k, t in strategy.state_dict().items())


def test_disk_slices_are_whole_pieces_of_the_noise_stream() -> None:
    """The disk path draws each slice's noise as the in-memory path draws the same elements."""
    assert SLICE_ELEMENTS % NOISE_SLICE == 0


MEASURE = textwrap.dedent(
    """
    import json, math, resource, sys
    from pathlib import Path
    import torch
    from fedcore.strategies import disk_accumulator
    disk_accumulator.SLICE_ELEMENTS = 1 << 18  # 2 MiB of float64: the model is 128 slices
    from fedcore.strategies import DPFedAvg, FedAdam
    from fedcore.strategies.dp_noise import NoiseKey
    from fedcore.weights import TensorSpec, open_weights
    from fedcore.weights_stream import StreamingWeightsWriter

    name, disk, numel, tmp = sys.argv[1], sys.argv[2] == "disk", int(sys.argv[3]), Path(sys.argv[4])
    def write(path, seed):  # a slice at a time, so that writing costs no model of memory
        spec = {"w": TensorSpec((numel,), torch.float32), "b": TensorSpec((7,), torch.float32)}
        g = torch.Generator().manual_seed(seed)
        with StreamingWeightsWriter(path, spec) as out:
            for n in out.order:
                for start in range(0, numel if n == "w" else 7, 1 << 18):
                    count = min(1 << 18, (numel if n == "w" else 7) - start)
                    out.write(n, torch.randn(count, generator=g) * 1e-2)
        return path

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    def make():
        s = FedAdam(server_learning_rate=0.05) if name == "fedadam" else DPFedAvg(
            noise_multiplier=1.0, clip_norm=1.0)
        if disk:
            s.accumulator, s.accumulator_dir = "disk", tmp
        return s
    def rounds(base, updates):
        state = None
        for r in (1, 2):
            s = make()  # a restarted aggregator: a fresh strategy that loads the state file
            if state is not None:
                s.load_state_file(state)
            with open_weights(base) as reader:
                s.begin_round(reader.template())
            if isinstance(s, DPFedAvg):
                s.noise_key = NoiseKey(bytes(32))
            for u in updates:
                with open_weights(u) as update:
                    s.fold(update, 10)
            new = tmp / f"global-{r}.safetensors"
            with open_weights(base) as reader:
                s.finalize_to_file(reader, new, {"round": r})
            state = tmp / f"state-{r}.safetensors"
            if s.save_state(state, {"round": r}) is None:
                state = None
            base = new
            del s

    full = numel
    numel = 3 << 18  # a warm-up on a model of three slices: one-time allocations happen there
    warm = [write(tmp / f"u{k}.safetensors", k + 1) for k in range(2)]
    rounds(write(tmp / "base.safetensors", 0), warm)
    numel = full
    base = write(tmp / "base.safetensors", 0)
    updates = [write(tmp / f"u{k}.safetensors", k + 1) for k in range(2)]
    baseline = peak()
    rounds(base, updates)
    print(json.dumps({"baseline": baseline, "peak": peak()}))
    """
)


@pytest.mark.parametrize(
    ("strategy", "mode"),
    [("fedadam", "disk"), ("dpfedavg", "disk"), ("fedadam", "memory")],
)
def test_disk_mode_memory_does_not_hold_the_model(tmp_path: Path, strategy: str, mode: str) -> None:
    """Peak resident memory of a fresh process over two rounds, above what it held before the
    first round, against a 128 MiB model (128 slices; the in-memory run is the control that
    shows the measurement sees model-sized buffers)."""
    numel = 32 << 20
    model_bytes = 4 * numel
    root = Path(__file__).resolve().parents[2]

    done = subprocess.run(
        [sys.executable, "-c", MEASURE, strategy, mode, str(numel), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    grown = measured["peak"] - measured["baseline"]
    if mode == "disk":
        assert grown < model_bytes / 4, f"grew {grown / 2**20:.0f} MiB for a 128 MiB model"
    else:
        assert grown > 2 * model_bytes, f"grew {grown / 2**20:.0f} MiB for a 128 MiB model"


@pytest.mark.parametrize("disk", [False, True], ids=["memory", "disk"])
def test_a_model_without_float_tensors_has_no_state_file_in_either_mode(
    tmp_path: Path, disk: bool
) -> None:
    base = {"steps": torch.tensor(3)}
    strategy = FedAdam()
    if disk:
        in_disk_mode(strategy, tmp_path)
    strategy.begin_round(template_of(base))
    strategy.fold(InMemoryWeights({"steps": torch.tensor(2)}), 1)
    strategy.finalize(InMemoryWeights(base))

    assert strategy.save_state(tmp_path / "state.safetensors", {"round": 1}) is None
    assert not (tmp_path / "state.safetensors").exists()
