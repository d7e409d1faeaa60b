"""The contract every aggregation strategy follows, so the aggregator can stream any of them.

A round is ``begin_round(template)``, then one ``fold(update, num_samples)`` per accepted
update as it arrives, then ``finalize(base)`` which returns the next global model. When
``max_weight_share`` caps a client's share and the round's counts make the cap bind, the
aggregator folds the round again with the capped weights (``fold(..., weight=...)``; see
``fedcore.strategies.weighting`` for why this takes a second pass). Updates are
read tensor by tensor (``fedcore.weights.TensorSource``), so a strategy's memory is what it
accumulates, never ``clients x model``.

A strategy assumes its inputs passed ``fedcore.validation.validate_update``: it re-checks
their structure (names, shapes, dtypes, from the header, before any arithmetic) and raises
``ValueError`` on a mismatch, but it does not re-check values.

State that outlives a round (a server optimizer's momentum) is exposed as a flat tensor
mapping by ``state_dict()``; the aggregator persists it next to the round's global model and
``load_state_dict()`` restores it in a restarted aggregator, which then produces the same
bytes as one that never stopped. The aggregator goes through files (``save_state``,
``load_state_file``), so that a strategy keeping its state on local disk (the disk
accumulator's server optimizers) can stream it out and read it back a slice at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Literal

import torch

from fedcore.strategies.weighting import FoldWeight
from fedcore.weights import (
    FLOAT_DTYPES,
    INT_DTYPES,
    Template,
    Tensors,
    TensorSource,
    TensorSpec,
    check_same_structure,
    dtype_name,
    load_weights,
    save_weights,
)

Accumulator = Literal["memory", "disk"]
"""Where a strategy keeps the round's running sum: in memory (8 bytes per parameter of RAM),
or in a file on local disk, folded slice by slice (``fedcore.strategies.disk_accumulator``)."""

MAX_NUM_SAMPLES = 10**12
"""Largest accepted FedAvg weight of one update. Far above any real dataset, low enough that
``num_samples x integer delta`` sums stay exact in int64 and float64."""

MAX_INT_ACCUMULATOR = 2**61
"""Largest ``|Σ n_k Δ_k|`` an integer tensor's exact int64 accumulator may reach. Below
``2**62`` the mean's ``2 acc + n`` cannot wrap; ``2**61`` leaves the sample counts room.
``fedcore.validation`` rejects one update beyond it (``out-of-range``) and ``fold`` refuses
one that would take the running sum beyond it (``OutOfRange``)."""


class OutOfRange(ValueError):
    """Folding this update would take an integer accumulator past ``MAX_INT_ACCUMULATOR``.

    Raised before anything is added: the strategy is left as it was, and the aggregator
    rejects the update (``out-of-range``) and goes on.
    """


ARITHMETIC_THREADS = 1
"""Intra-op threads for folding, finalizing and value checks. One, because this arithmetic is
memory-bound: more threads add little on an idle machine, and when the CPUs are contended (a
shared node, a CPU-limited pod: PyTorch sizes its pool by the node's cores, not the pod's
limit) their synchronization made a 400 MB fold 8x slower (2.2 s against 0.27 s, measured on
2 busy cores)."""


@contextmanager
def arithmetic_threads(threads: int = ARITHMETIC_THREADS) -> Iterator[None]:
    """Run the enclosed torch arithmetic on ``threads`` threads, then restore the setting."""
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_num_samples(num_samples: int) -> None:
    """Raise ``ValueError`` unless ``num_samples`` is an int in ``[1, MAX_NUM_SAMPLES]``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise ValueError(f"num_samples must be an int, got {type(num_samples).__name__}")
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise ValueError(
            f"num_samples must be between 1 and {MAX_NUM_SAMPLES}, got {num_samples}; "
            "an update trained on no samples carries no weight and must not be folded"
        )


def check_update(template: Mapping[str, TensorSpec], update: TensorSource) -> None:
    """Refuse an update whose structure does not fit the model before any arithmetic: the
    same tensor names and shapes, float tensors in any float dtype, other tensors in the
    model's own dtype, and bool tensors (constants of the model) unchanged."""
    wire = update.template()
    check_same_structure(
        template, wire, left_name="the model", right_name=repr(update), compare_dtypes=False
    )
    for name, spec in template.items():
        got = wire[name].dtype
        ok = got in FLOAT_DTYPES if spec.dtype in FLOAT_DTYPES else got == spec.dtype
        if not ok:
            raise ValueError(
                f"tensor {name!r} of {update!r} has dtype {dtype_name(got)} but the model's is "
                f"{dtype_name(spec.dtype)}; float tensors may travel as any float dtype, "
                "others must keep theirs"
            )
    for name, spec in template.items():  # reading values only once the structure is right
        if spec.dtype == torch.bool and bool(update.get(name).any()):
            raise ValueError(
                f"bool tensor {name!r} of {update!r} changed (its delta is not all-False); "
                "bool tensors are constants of the model and cannot be aggregated"
            )


def averageable_template(template: Template, strategy: str) -> dict[str, TensorSpec]:
    """``template`` as sorted ``TensorSpec``s, refusing a tensor whose dtype no averaging
    strategy can combine (float, integer and bool tensors only)."""
    specs = {name: TensorSpec(tuple(s.shape), s.dtype) for name, s in template.items()}
    for name, spec in specs.items():
        if spec.dtype not in FLOAT_DTYPES | INT_DTYPES | {torch.bool}:
            raise ValueError(
                f"tensor {name!r} has dtype {dtype_name(spec.dtype)}, which {strategy} "
                "cannot average; keep it out of the state_dict or store it as float/int"
            )
    return dict(sorted(specs.items()))


def server_state_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype server state (momentum, moments) of a float tensor is kept in: the model's,
    at least float32, so that low-precision models do not lose the state's small values."""
    return torch.promote_types(model_dtype, torch.float32)


def check_server_state(
    what: str, state: Mapping[str, torch.Tensor | TensorSpec], template: Template
) -> None:
    """Refuse server state (``what``: "the server momentum", ...) that does not fit the model:
    a tensor the model lacks, or one of another shape or dtype. Loaded state comes from the
    store, so a mismatch means it belongs to another model."""
    for name, kept in state.items():
        spec = template.get(name)
        if spec is None or spec.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{what} has a tensor {name!r} that is not a float tensor of the model; the "
                "state belongs to another model"
            )
        want = server_state_dtype(spec.dtype)
        if tuple(kept.shape) != tuple(spec.shape) or kept.dtype != want:
            raise ValueError(
                f"{what} of {name!r} is {dtype_name(kept.dtype)}{list(kept.shape)}, expected "
                f"{dtype_name(want)}{list(spec.shape)}; the state belongs to another model"
            )


def _non_finite(tensors: Mapping[str, torch.Tensor], label: str = "") -> list[str]:
    """Keys (prefixed by ``label``) of the float tensors holding NaN or inf, sorted."""
    with arithmetic_threads():
        return sorted(
            f"{label}{key}"
            for key, tensor in tensors.items()
            if tensor.dtype in FLOAT_DTYPES and not bool(torch.isfinite(tensor).all())
        )


class Strategy(ABC):
    """Streaming aggregation: fold updates one at a time, finalize once per round."""

    name: ClassVar[str]
    """The ``spec.strategy.name`` that selects this strategy."""

    disk_accumulator: ClassVar[bool] = False
    """Whether the strategy can keep its sum (and any server state of the model's size) on
    local disk: True for the weighted sums (FedAvg and its server optimizers, DP-FedAvg);
    False for those that keep other O(model) state in memory (control variates, the round's
    updates)."""
    accumulator: Accumulator = "memory"
    """``memory`` or ``disk`` (only where ``disk_accumulator``), read at ``begin_round``; the
    aggregator sets it from ``spec.aggregator.accumulator``."""
    accumulator_dir: Path | None = None
    """Directory of the disk accumulator's files (None: the system's temporary one)."""

    @abstractmethod
    def begin_round(self, template: Template) -> None:
        """Start a round for a model with this structure (name -> shape, dtype).

        Discards anything folded in an unfinished round.
        """

    def update_template(self, model: Template) -> dict[str, TensorSpec]:
        """The tensors an update for a model of this structure carries: the model's deltas,
        and whatever else the strategy's clients send with them (SCAFFOLD's variate deltas).
        ``fedcore.validation`` checks an update against it, and its bytes bound the upload."""
        return dict(model)

    max_weight_share: float | None = None
    """Cap on any one client's share of a round (``fedcore.strategies.weighting``); None:
    shares are the plain sample counts'."""

    @abstractmethod
    def fold(
        self, update: TensorSource, num_samples: int, *, weight: FoldWeight | None = None
    ) -> None:
        """Fold one validated client delta, weighted by the samples it was trained on, or by
        ``weight`` (computed from this ``num_samples`` by ``weighting.capped_weights``)."""

    @abstractmethod
    def finalize(self, base: TensorSource) -> Tensors:
        """The next global model from the round's base model and everything folded.

        Consumes the round: call ``begin_round`` before folding again.
        """

    def finalize_to_file(
        self, base: TensorSource, path: Path, metadata: Mapping[str, str | int]
    ) -> list[str]:
        """``finalize`` into a safetensors file at ``path`` (with header ``metadata``); the
        names of its float tensors that hold NaN or inf, sorted. A strategy that never holds
        the whole model (FedAvg with the disk accumulator) streams it instead."""
        new = self.finalize(base)
        with arithmetic_threads():
            bad = sorted(
                name
                for name, tensor in new.items()
                if tensor.dtype in FLOAT_DTYPES and not bool(torch.isfinite(tensor).all())
            )
        save_weights(path, new, metadata)
        return bad

    @abstractmethod
    def alone_is_finite(self, update: TensorSource, base: TensorSource) -> bool:
        """Whether ``update``, were it the round's only one, would give a finite model and
        finite server state. Reads the state as it is now (call it before ``finalize``) and
        changes nothing. The aggregate is a weighted mean of these single-update results,
        so when every folded update passes, the round's result is finite too."""

    @property
    @abstractmethod
    def num_updates(self) -> int:
        """Updates folded in the current round."""

    @property
    @abstractmethod
    def num_samples(self) -> int:
        """Sum of the folded updates' ``num_samples``."""

    def state_dict(self) -> Tensors:
        """Server-side state to persist between rounds (empty for stateless strategies)."""
        return {}

    def save_state(self, path: Path, metadata: Mapping[str, str | int]) -> list[str] | None:
        """Write ``state_dict()`` into a safetensors file at ``path`` (with header
        ``metadata``): the keys holding NaN or inf (``state <key>``, sorted), or None, with
        no file written, when there is no state. A strategy whose state is on disk streams
        it instead."""
        state = self.state_dict()
        if not state:
            return None
        bad = _non_finite(state, "state ")
        save_weights(path, state, metadata)
        return bad

    def load_state_file(self, path: Path) -> None:
        """``load_state_dict`` from a file ``save_state`` wrote; ``ValueError`` when it holds
        NaN or inf, or does not fit. A strategy that keeps its state on disk reads it a slice
        at a time instead of loading it whole."""
        state = load_weights(path)
        bad = _non_finite(state)
        if bad:
            raise ValueError(f"it holds NaN or inf in {', '.join(bad[:5])}")
        self.load_state_dict(state)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned; takes ownership of the tensors."""
        if state:
            raise ValueError(
                f"strategy {self.name!r} keeps no state between rounds but was given "
                f"{len(state)} state tensors; was the state written by another strategy?"
            )
