"""FedAvg's disk accumulator: bit for bit the in-memory one, and a fold that fails half-way
(at a slice boundary) recomputed to the same bytes; its file leaves nothing on disk."""

from __future__ import annotations

import errno
import hashlib
import math
import os
from pathlib import Path

import pytest
import torch

from fedcore.strategies import FedAvg, Scaffold
from fedcore.strategies.base import OutOfRange
from fedcore.strategies.disk_accumulator import (
    SLICE_ELEMENTS,
    AccumulatorSpaceError,
    DiskAccumulator,
)
from fedcore.strategies.weighting import FoldWeight
from fedcore.weights import (
    InMemoryWeights,
    Tensors,
    WeightsReader,
    open_weights,
    save_weights,
    template_of,
)

ODD = SLICE_ELEMENTS + 3 * (1 << 18) + 7
"""Elements of a tensor spanning two slices, whose last chunk is a short one."""


def model(seed: int, scale: float = 1.0) -> Tensors:
    """Every dtype FedAvg takes: floats (one across slices), integers, a mask, an empty one."""
    g = torch.Generator().manual_seed(seed)
    return {
        "big": torch.randn(ODD, generator=g) * scale,
        "conv.weight": torch.randn(3, 5, 7, generator=g) * scale,
        "half": (torch.randn(300, generator=g) * scale).to(torch.bfloat16),
        "wide": torch.randn(1000, generator=g, dtype=torch.float64) * scale,
        "steps": torch.tensor(seed % 5, dtype=torch.int64),
        "small_int": torch.tensor([seed % 3, 1], dtype=torch.int16),
        "mask": torch.zeros(4, dtype=torch.bool),
        "empty": torch.zeros(0, 3),
    }


def write(path: Path, tensors: Tensors, **meta: str | int) -> Path:
    save_weights(path, tensors, meta)
    return path


def run_round(
    strategy: FedAvg, tmp_path: Path, label: str, updates: list[tuple[Path, int]], base: Path
) -> Path:
    """One round through files; the new model's path."""
    with open_weights(base) as reader:
        strategy.begin_round(reader.template())
    for path, n in updates:
        with open_weights(path) as update:
            strategy.fold(update, n)
    out = tmp_path / f"{label}.safetensors"
    with open_weights(base) as reader:
        assert strategy.finalize_to_file(reader, out, {"kind": "global", "round": 1}) == []
    return out


@pytest.fixture
def round_files(tmp_path: Path) -> tuple[Path, list[tuple[Path, int]]]:
    base = write(tmp_path / "base.safetensors", model(0))
    updates = [
        (write(tmp_path / f"u{k}.safetensors", model(k + 1, 1e-2)), 100 + 37 * k) for k in range(3)
    ]
    return base, updates


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "options",
    [{}, {"server_learning_rate": 0.7}, {"clip_norm": 0.5}],
    ids=["plain", "server-learning-rate", "clipped"],
)
def test_disk_accumulator_writes_the_same_bytes_as_the_in_memory_one(
    tmp_path: Path, round_files: tuple[Path, list[tuple[Path, int]]], options: dict[str, float]
) -> None:
    base, updates = round_files

    memory = run_round(FedAvg(**options), tmp_path, "memory", updates, base)  # type: ignore[arg-type]
    disk = run_round(
        FedAvg(accumulator="disk", accumulator_dir=tmp_path, **options),  # type: ignore[arg-type]
        tmp_path,
        "disk",
        updates,
        base,
    )

    assert digest(disk) == digest(memory)


def test_disk_accumulator_takes_capped_weights_and_in_memory_sources_like_memory(
    tmp_path: Path,
) -> None:
    base = model(0)
    updates = [(model(k + 1, 1e-2), 10 + k) for k in range(3)]
    weights = [FoldWeight(7.5, 8, 10), FoldWeight(11.0, 11, 11), FoldWeight(9.25, 9, 12)]
    results = []
    for strategy in (FedAvg(), FedAvg(accumulator="disk", accumulator_dir=tmp_path)):
        strategy.begin_round(template_of(base))
        for (update, n), weight in zip(updates, weights, strict=True):
            strategy.fold(InMemoryWeights(update), n, weight=weight)
        results.append(strategy.finalize(InMemoryWeights(base)))

    memory, disk = results
    assert memory.keys() == disk.keys()
    for name in memory:
        assert memory[name].dtype == disk[name].dtype
        assert memory[name].shape == disk[name].shape
        assert torch.equal(
            memory[name].view(-1).view(torch.uint8), disk[name].view(-1).view(torch.uint8)
        ), name


class FailingReader(WeightsReader):
    """An update file whose reads fail after ``good`` slices (a disk error half-way)."""

    def __init__(self, path: Path, good: int) -> None:
        super().__init__(path)
        self.good = good

    def get_flat_slice(self, name: str, start: int, stop: int) -> torch.Tensor:
        if self.good == 0:
            raise OSError(errno.EIO, "injected read error")
        self.good -= 1
        return super().get_flat_slice(name, start, stop)


def test_a_fold_failing_at_a_slice_boundary_refolded_gives_the_uninterrupted_bytes(
    tmp_path: Path, round_files: tuple[Path, list[tuple[Path, int]]]
) -> None:
    base, updates = round_files
    expected = run_round(FedAvg(), tmp_path, "uninterrupted", updates, base)
    broken = FedAvg(accumulator="disk", accumulator_dir=tmp_path)
    with open_weights(base) as reader:
        broken.begin_round(reader.template())
    with open_weights(updates[0][0]) as update:
        broken.fold(update, updates[0][1])
    with pytest.raises(OSError, match="injected"), FailingReader(updates[1][0], 1) as failing:
        broken.fold(failing, updates[1][1])  # the first slice of 'big' is in, the rest not
    with pytest.raises(RuntimeError, match="failed half-way"), open_weights(base) as reader:
        broken.finalize(reader)

    # What the aggregator does then (fedcore.folding.OpenRound.refold): a fresh strategy
    # folds the round's updates again, read anew.
    again = run_round(
        FedAvg(accumulator="disk", accumulator_dir=tmp_path), tmp_path, "refolded", updates, base
    )

    assert digest(again) == digest(expected)


def test_the_accumulator_file_has_no_name_and_its_space_is_allocated_up_front(
    tmp_path: Path,
) -> None:
    template = template_of(
        {"w": torch.zeros(1000, 3), "n": torch.tensor(1), "m": torch.tensor(True)}
    )

    accumulator = DiskAccumulator(template, tmp_path)

    assert accumulator.nbytes == 8 * (3000 + 1)
    assert os.fstat(accumulator._file.fileno()).st_blocks * 512 >= accumulator.nbytes
    assert list(tmp_path.iterdir()) == []  # nothing a crash could leave behind
    accumulator.close()


def test_a_disk_too_small_for_the_accumulator_fails_the_round_start_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    strategy = FedAvg(accumulator="disk", accumulator_dir=tmp_path)

    with pytest.raises(AccumulatorSpaceError, match="scratchSizeLimit"):
        strategy.begin_round(template_of({"w": torch.zeros(10)}))


def test_integer_headroom_is_checked_against_the_sum_on_disk(tmp_path: Path) -> None:
    big = 2**60
    template = template_of({"n": torch.tensor(0)})
    strategy = FedAvg(accumulator="disk", accumulator_dir=tmp_path)
    strategy.begin_round(template)
    strategy.fold(InMemoryWeights({"n": torch.tensor(big)}), 1)

    with pytest.raises(OutOfRange, match="could reach"):
        strategy.fold(InMemoryWeights({"n": torch.tensor(big)}), 2)
    strategy.fold(InMemoryWeights({"n": torch.tensor(-big)}), 1)  # refused left acc as it was
    assert int(strategy.finalize(InMemoryWeights({"n": torch.tensor(0)}))["n"]) == 0


def test_scaffold_refuses_the_disk_accumulator(tmp_path: Path) -> None:
    strategy = Scaffold()
    strategy.num_clients = 2
    strategy.accumulator = "disk"

    with pytest.raises(ValueError, match="accumulator: memory"):
        strategy.begin_round(template_of({"w": torch.zeros(3)}))


def test_slices_are_whole_chunks_of_the_in_memory_add() -> None:
    from fedcore.strategies.fedavg import CHUNK_ELEMENTS

    assert SLICE_ELEMENTS % CHUNK_ELEMENTS == 0
    assert math.prod((SLICE_ELEMENTS, 8)) <= 16 << 20  # one slice of float64 stays small
