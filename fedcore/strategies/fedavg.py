"""Streaming FedAvg: fold each client delta in as it arrives, in O(model) memory.

The update rule (McMahan et al., 2017, written on deltas ``Δ_k = w_k - w_t``)::

    w_{t+1} = w_t + η · Σ_k n_k/n · Δ_k          n = Σ_k n_k,  η = serverLearningRate (1.0)

With ``η = 1`` this is exactly the seed formula ``w_{t+1} = Σ_k n_k/n · w_k``.

Every strategy built on this one also takes two defences. ``maxWeightShare`` replaces
``n_k`` by a capped weight ``w_k`` (``fedcore.strategies.weighting``; the aggregator passes
it to ``fold(..., weight=...)`` when the cap binds). ``clipNorm``/``clipQuantile`` scale each
delta by ``s_k = min(1, C / ||Δ_k||)`` before it is folded (``fedcore.strategies.clipping``;
one more read of the update per fold). The mean is then ``Σ_k w_k s_k Δ_k / Σ_k w_k``.

How it streams. ``fold`` adds ``n_k · Δ_k`` into a running accumulator ``acc``, reading the
update tensor by tensor; ``finalize`` turns ``acc`` into the model in place, tensor by tensor,
reading the base model the same way.

Numerics. Float tensors (float16, bfloat16, float32, float64 on the wire) accumulate in
float64: ``n_k · Δ_k`` is exact for a float32 delta and any ``n_k < 2**29``, so the only
rounding is in the sums, ~1e-16 relative. The result therefore does not depend on the order
updates arrive in beyond ~1e-12 (far below float32 resolution), and is bit-identical for the
same order. ``finalize`` computes ``acc / n``, scales by ``η``, adds the base in float64 and
rounds once to the model's dtype.

Memory math, for a model of ``P`` float32 parameters (``M = 4P`` bytes) and any number of
clients:

* accumulator: 8 bytes per float element, ``2M`` (``4M`` for a float16/bfloat16 model);
* ``fold``: plus one read buffer reused for every tensor (``fedcore.weights.Scratch``), the
  size of the largest tensor ``t_max``, plus a 2 MiB slice: PyTorch's CPU kernels copy a
  float32 input to float64 before adding it into a float64 tensor, so ``add_chunked_`` adds
  in 256 Ki-element slices (which also keeps the temporary in cache: 2.5x faster than one
  whole-tensor add, measured);
* ``finalize``: for each tensor, the base tensor is read into the same buffer, ``acc`` is
  updated in place, cast to the model dtype (a new tensor, half its size) and the float64
  tensor is dropped. Memory goes from ``2M`` down to ``M`` (the result) and never exceeds
  ``2M + 2 t_max``;

so the aggregator's peak is about ``2M + 2 t_max`` (plus what the C allocator keeps),
whatever the number of clients. The benchmark (``make bench``) measures it against loading
every update at once: 2.1-2.2x one model for 10 clients.

With ``accumulator="disk"`` (``spec.aggregator.accumulator``) the sum lives in a file on
local disk instead (``fedcore.strategies.disk_accumulator``: same arithmetic, same bytes),
folded and finalized in 8 MiB slices, and ``finalize_to_file`` streams the new model into its
safetensors file: memory is a few slices, whatever ``M``; disk is ``2M`` more; each fold
also reads and writes the ``2M`` sum once. A server optimizer's state of the model's size
(FedAvgM's momentum, FedOpt's moments: ``state_prefixes``) then lives on disk as well, read
and written a slice at a time next to the sum (``fedcore.strategies.server_state``); the
server step is element-wise, so each slice gets the very arithmetic the whole tensor gets in
memory. SCAFFOLD (its control variates) refuses the disk accumulator (``disk_accumulator``).

The server step is ``_step(mean_delta, base, previous)``: the new values of one tensor (or
of one flat slice of it) and its new state, from the mean delta, the base and the previous
state of the same elements. Subclasses override it, and nothing else, to change the step.

Non-float tensors:

* Integer tensors (``num_batches_tracked`` and other counters) accumulate exactly in int64;
  the result is ``base + round(Σ n_k Δ_k / n)``, rounded to nearest with ties toward +inf,
  cast back to the tensor's dtype. For BatchNorm's step counter that is the sample-weighted
  mean number of local steps. ``η`` does not apply to them. Exactness holds while
  ``|Σ n_k Δ_k| < 2**62``: ``fold`` refuses (``OutOfRange``, before adding anything) an update
  that would take the sum past ``MAX_INT_ACCUMULATOR``, and validation already checked that
  ``base + Δ_k`` fits the dtype for every update, so the rounded mean fits too (it lies
  between the smallest and largest delta); the ``ValueError`` of ``finalize`` for a result
  that does not fit is a last line that validated input never reaches.
* Bool tensors (masks) are constants of the model: every update's delta must be all-False
  (``fedcore.validation`` rejects others with ``constant-changed``; ``fold`` refuses them
  before any arithmetic) and the result is the base tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import torch

from fedcore.spec import StrategySpec
from fedcore.strategies.base import (
    MAX_INT_ACCUMULATOR,
    Accumulator,
    OutOfRange,
    Strategy,
    arithmetic_threads,
    averageable_template,
    check_num_samples,
    check_server_state,
    check_update,
)
from fedcore.strategies.clipping import (
    BOUND_KEY,
    check_clipping,
    clip_scale,
    quantile,
    update_norm,
)
from fedcore.strategies.disk_accumulator import DiskAccumulator, flat_slices
from fedcore.strategies.server_state import ServerState, Slices
from fedcore.strategies.weighting import FoldWeight, check_max_weight_share
from fedcore.weights import (
    FLOAT_DTYPES,
    INT_DTYPES,
    Scratch,
    Template,
    Tensors,
    TensorSource,
    TensorSpec,
    WeightsReader,
    check_same_structure,
    dtype_name,
)
from fedcore.weights_stream import StreamingWeightsWriter


class FedAvg(Strategy):
    """Sample-weighted mean of client deltas, accumulated in float64 (exact int64 for ints)."""

    name: ClassVar[str] = "fedavg"
    disk_accumulator: ClassVar[bool] = True
    state_prefixes: ClassVar[Mapping[str, str]] = {}
    """The server step's state of the model's size: key prefix -> what it is (for errors),
    e.g. ``{"momentum/": "the server momentum"}``; kept in ``ServerState``."""

    def __init__(
        self,
        *,
        server_learning_rate: float = 1.0,
        max_weight_share: float | None = None,
        clip_norm: float | None = None,
        clip_quantile: float | None = None,
        accumulator: Accumulator = "memory",
        accumulator_dir: Path | None = None,
    ) -> None:
        check_max_weight_share(max_weight_share)
        check_clipping(clip_norm, clip_quantile)
        self.max_weight_share = max_weight_share
        self.clip_quantile = clip_quantile
        """Adaptive clipping: the next round's bound is this quantile of this round's norms."""
        self.clip_bound = clip_norm
        """The bound this round's updates are clipped to (``fedcore.strategies.clipping``)."""
        self._norms: list[float] = []
        """Unclipped norms of the updates folded this round (adaptive clipping only)."""
        if not (math.isfinite(server_learning_rate) and server_learning_rate > 0):
            raise ValueError(
                f"server_learning_rate must be a finite number > 0, got {server_learning_rate}; "
                "1.0 is plain FedAvg"
            )
        self.server_learning_rate = server_learning_rate
        """``η``: the averaged delta is scaled by it before being added to the base."""
        self._template: dict[str, TensorSpec] | None = None
        self.accumulator: Accumulator = accumulator
        """``memory`` or ``disk``, read at ``begin_round`` (the aggregator sets it from
        ``spec.aggregator.accumulator``)."""
        self.accumulator_dir = accumulator_dir
        """Directory of the disk accumulator's file (None: the system's temporary one)."""
        self._acc: dict[str, torch.Tensor] = {}
        self._disk: DiskAccumulator | None = None
        self._state = ServerState(tuple(self.state_prefixes))
        """The server step's state (``state_prefixes``), in memory or on disk."""
        self._scratch = Scratch()
        """One read buffer for every tensor of every update (see ``fedcore.weights.Scratch``)."""
        self._num_updates = 0
        self._num_samples = 0
        self._total_weight = 0.0
        """Σ of the float tensors' weights (``num_samples``, or ``FoldWeight.value``)."""
        self._total_integer_weight = 0
        """Σ of the integer tensors' weights (``num_samples``, or ``FoldWeight.integer``)."""
        self._broken = False

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> FedAvg:
        return cls(
            server_learning_rate=spec.server_learning_rate,
            max_weight_share=spec.max_weight_share,
            clip_norm=spec.clip_norm,
            clip_quantile=spec.clip_quantile,
        )

    @property
    def num_updates(self) -> int:
        return self._num_updates

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def begin_round(self, template: Template) -> None:
        specs = averageable_template(template, self.name)
        self._acc = {}  # drop the old round's buffers before allocating the new ones
        self._close_disk()
        self._template = specs
        if self.accumulator == "disk":
            if not self.disk_accumulator:
                raise ValueError(
                    f"strategy {self.name!r} cannot keep its accumulator on disk (its server "
                    "state is in memory anyway); use spec.aggregator.accumulator: memory"
                )
            self._disk = DiskAccumulator(specs, self.accumulator_dir)
        else:
            self._state.to_memory()  # the in-memory step takes whole tensors
        self._state.drop_written()
        for prefix, what in self.state_prefixes.items():
            check_server_state(what, self._state.of(prefix), template)
        with arithmetic_threads():
            for name, spec in self._template.items():
                if self._disk is not None:
                    continue
                if spec.dtype in FLOAT_DTYPES:
                    self._acc[name] = torch.zeros(spec.shape, dtype=torch.float64)
                elif spec.dtype in INT_DTYPES:
                    self._acc[name] = torch.zeros(spec.shape, dtype=torch.int64)
        self._num_updates = 0
        self._num_samples = 0
        self._total_weight = 0.0
        self._total_integer_weight = 0
        self._norms = []
        self._broken = False

    def _round_template(self, action: str) -> dict[str, TensorSpec]:
        if self._template is None:
            raise RuntimeError(f"cannot {action}: call begin_round(template) first")
        if self._broken:
            raise RuntimeError(
                f"cannot {action}: an earlier fold or finalize failed half-way and left the "
                "accumulator inconsistent; call begin_round and fold the round's updates again"
            )
        return self._template

    def _check_int_headroom(
        self, template: dict[str, TensorSpec], update: TensorSource, num_samples: int
    ) -> None:
        """Raise ``OutOfRange`` if adding ``num_samples x update`` (``num_samples``: the
        integer weight) could wrap an integer accumulator (exact bounds, in Python integers)."""
        for name, spec in template.items():
            if spec.dtype not in INT_DTYPES:
                continue
            d = update.get(name, self._scratch)
            if not d.numel():
                continue
            largest_delta = max(int(d.max()), -int(d.min()))
            if self._disk is not None:
                largest_sum = self._disk.extreme(name)
            else:
                acc = self._acc[name]
                largest_sum = max(int(acc.max()), -int(acc.min()))
            if largest_sum + num_samples * largest_delta > MAX_INT_ACCUMULATOR:
                raise OutOfRange(
                    f"integer tensor {name!r}: with this update the weighted sum of deltas "
                    f"could reach {largest_sum + num_samples * largest_delta}, past the "
                    f"{MAX_INT_ACCUMULATOR} the aggregate sums exactly"
                )

    def fold(
        self, update: TensorSource, num_samples: int, *, weight: FoldWeight | None = None
    ) -> None:
        template = self._round_template("fold an update")
        check_num_samples(num_samples)
        value, integer = _weights_of(num_samples, weight)
        check_update(template, update)
        self._check_int_headroom(template, update, integer)
        norm, scaled = None, value
        if self.clip_bound is not None:
            with arithmetic_threads():
                norm = update_norm(update, template.items(), self._scratch)
            scale = clip_scale(norm, self.clip_bound)
            scaled = value if scale == 1.0 else value * scale
        self._broken = True  # until every tensor is in: an I/O error half-way spoils acc
        with arithmetic_threads():
            if self._disk is not None:
                self._fold_disk(self._disk, update, scaled, integer)
            for name, acc in self._acc.items():
                alpha = scaled if acc.dtype == torch.float64 else integer
                add_chunked_(acc, update.get(name, self._scratch), alpha=alpha)
        self._broken = False
        self._num_updates += 1
        self._num_samples += num_samples
        self._total_weight += value
        self._total_integer_weight += integer
        if norm is not None:
            self._norms.append(norm)

    def finalize(self, base: TensorSource) -> Tensors:
        template = self._begin_finalize(base)
        if self._disk is not None:  # the whole model in memory: for tests and small models
            self._broken = True
            with arithmetic_threads():
                pieces: dict[str, list[torch.Tensor]] = {}
                for name, values in self._disk_results(self._disk, template, base, list(template)):
                    pieces.setdefault(name, []).append(values.clone())
            self._state.commit_written()
            result = {
                name: torch.cat(pieces.get(name, [torch.empty(0, dtype=spec.dtype)])).reshape(
                    spec.shape
                )
                for name, spec in template.items()
            }
            self._end_round()
            return result
        n, n_integer = self._total_weight, self._total_integer_weight
        out: Tensors = {}
        self._broken = True
        with arithmetic_threads():
            for name, spec in template.items():
                b = base.get(name, self._scratch)  # read-only view, valid for this iteration
                if spec.dtype in FLOAT_DTYPES:
                    acc = self._acc.pop(name)
                    acc.div_(n)
                    out[name], state = self._step(acc, b, self._state.take(name))
                    self._state.keep(name, state)
                    del acc, state  # frees 8 bytes per element before the next tensor is read
                elif spec.dtype in INT_DTYPES:
                    out[name] = _integer_mean_step(name, self._acc.pop(name), n_integer, b)
                else:
                    out[name] = b.clone()
        self._end_round()
        return out

    def _end_round(self) -> None:
        """Forget the round (its sums) and move the adaptive clipping bound."""
        self._template = None
        self._close_disk()
        self._scratch = Scratch()
        self._broken = False
        self._num_updates = 0
        self._num_samples = 0
        self._total_weight = 0.0
        self._total_integer_weight = 0
        if self.clip_quantile is not None and self._norms:
            bound = quantile(self._norms, self.clip_quantile)
            if bound > 0:  # all-zero updates say nothing about the scale: keep the bound
                self.clip_bound = bound
        self._norms = []

    def _close_disk(self) -> None:
        if self._disk is not None:
            self._disk.close()
            self._disk = None

    # -- the disk accumulator (fedcore.strategies.disk_accumulator) ------------------------

    def _fold_disk(
        self, disk: DiskAccumulator, update: TensorSource, value: int | float, integer: int
    ) -> None:
        """``acc += weight x update``, slice by slice, through the file."""
        for name, region in disk.regions.items():
            alpha = value if region.dtype == torch.float64 else integer
            for start, stop, d in flat_slices(update, name, region.numel, self._scratch):
                acc = disk.read(name, start, stop)
                add_chunked_(acc, d, alpha=alpha)
                disk.write(name, start, acc)

    def _disk_results(
        self, disk: DiskAccumulator, template: dict[str, TensorSpec], base: TensorSource,
        order: list[str],
    ) -> Iterator[tuple[str, torch.Tensor]]:  # fmt: skip
        """The new model's tensors as (name, flat slice) pairs, tensor by tensor in ``order``,
        each computed as ``finalize`` computes it in memory; the new server state goes into
        a scratch file slice by slice (the caller commits it once every slice is out)."""
        n, n_integer = self._total_weight, self._total_integer_weight
        self._state.begin_writing(template, self.accumulator_dir)
        for name in order:
            spec = template[name]
            numel = math.prod(spec.shape)
            for start, stop, b in flat_slices(base, name, numel, self._scratch):
                if spec.dtype in FLOAT_DTYPES:
                    acc = disk.read(name, start, stop)
                    acc.div_(n)
                    # The step by CHUNK_ELEMENTS: its float64 temporaries (FedOpt makes several)
                    # stay 2 MiB each; element-wise, so the result is the same.
                    for low in range(0, stop - start, CHUNK_ELEMENTS):
                        high = min(stop - start, low + CHUNK_ELEMENTS)
                        previous = self._state.slice(name, start + low, start + high)
                        values, state = self._step(acc[low:high], b[low:high], previous)
                        self._state.write(name, start + low, state)
                        yield name, values
                elif spec.dtype in INT_DTYPES:
                    acc = disk.read(name, start, stop)
                    yield name, _integer_mean_step(name, acc, n_integer, b)
                else:
                    yield name, b

    def _begin_finalize(self, base: TensorSource) -> dict[str, TensorSpec]:
        template = self._round_template("finalize")
        if self._num_updates == 0:
            raise ValueError(
                "cannot finalize a round into which no update was folded; a round needs at "
                "least one accepted update"
            )
        check_same_structure(
            template, base.template(), left_name="the model", right_name=repr(base)
        )
        return template

    def finalize_to_file(
        self, base: TensorSource, path: Path, metadata: Mapping[str, str | int]
    ) -> list[str]:
        """With the disk accumulator, stream the new model into ``path`` slice by slice
        (never whole in memory); otherwise as ``Strategy.finalize_to_file``."""
        if self._disk is None:
            return super().finalize_to_file(base, path, metadata)
        template = self._begin_finalize(base)
        bad: set[str] = set()
        self._broken = True
        with arithmetic_threads(), StreamingWeightsWriter(path, template, metadata) as out:
            for name, values in self._disk_results(self._disk, template, base, out.order):
                if values.dtype in FLOAT_DTYPES and not bool(torch.isfinite(values).all()):
                    bad.add(name)
                out.write(name, values)
        self._state.commit_written()
        self._end_round()
        return sorted(bad)

    def state_dict(self) -> Tensors:
        """``clip/bound`` with adaptive clipping (the bound the next round clips at), and the
        server step's state (``<prefix><name>`` per float tensor, empty before the first
        finalize), read into memory when it is on disk."""
        return {**self._bound_state(), **self._state.tensors()}

    def _bound_state(self) -> Tensors:
        if self.clip_quantile is None or self.clip_bound is None:
            return {}
        return {BOUND_KEY: torch.tensor([self.clip_bound], dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self._check_state_keys(list(state))
        if BOUND_KEY in state:
            self._load_bound(state[BOUND_KEY])
        self._state.load({k: v for k, v in state.items() if k != BOUND_KEY})

    def _check_state_keys(self, keys: list[str]) -> None:
        """Refuse keys this strategy does not keep, and server state incomplete across its
        prefixes (a first moment without its second)."""
        rest = [k for k in keys if k != BOUND_KEY]
        prefixes = tuple(self.state_prefixes)
        if not prefixes:
            if rest:
                raise ValueError(
                    f"strategy {self.name!r} keeps no state between rounds but was given "
                    f"{len(rest)} state tensors; was the state written by another strategy?"
                )
            return
        names: dict[str, set[str]] = {p: set() for p in prefixes}
        for key in rest:
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(
                    f"state key {key!r} is not a {self.name} state key (they start with "
                    f"{' or '.join(repr(p) for p in prefixes)}); was the state written by "
                    "another strategy?"
                )
            names[prefix].add(key.removeprefix(prefix))
        first = names[prefixes[0]]
        for prefix in prefixes[1:]:
            if names[prefix] != first:
                raise ValueError(
                    f"the {self.name} state has {prefixes[0]!r} and {prefix!r} for different "
                    f"tensors ({sorted(first ^ names[prefix])[:5]}); it is incomplete"
                )

    def _load_bound(self, bound: torch.Tensor) -> None:
        if self.clip_quantile is None:
            raise ValueError(
                f"the state holds an adaptive clipping bound ({BOUND_KEY!r}) but the "
                "strategy has no clipQuantile; was the state written by another spec?"
            )
        if bound.shape != (1,) or bound.dtype != torch.float64 or not float(bound[0]) > 0:
            raise ValueError(f"{BOUND_KEY!r} must be one float64 number > 0, got {bound}")
        self.clip_bound = float(bound[0])

    def load_state_file(self, path: Path) -> None:
        """With the disk accumulator and server state, keep the file open and read its state
        a slice at a time from now on (checked for NaN and inf the same way); otherwise as
        ``Strategy.load_state_file``."""
        if self.accumulator != "disk" or not self.state_prefixes:
            super().load_state_file(path)
            return
        reader = WeightsReader(path)
        try:
            keys = reader.keys()
            self._check_state_keys(keys)
            if BOUND_KEY in keys:
                self._load_bound(reader.get(BOUND_KEY))
            state_keys = [k for k in keys if k != BOUND_KEY]
            self._state.open(reader, state_keys)
        except BaseException:
            reader.close()
            raise
        bad = self._state.non_finite()
        if bad:
            raise ValueError(f"it holds NaN or inf in {', '.join(bad[:5])}")

    def save_state(self, path: Path, metadata: Mapping[str, str | int]) -> list[str] | None:
        """With the server state on disk, stream it into ``path`` a slice at a time;
        otherwise as ``Strategy.save_state``."""
        if not (self._state.on_disk and self._state.specs()):
            return super().save_state(path, metadata)
        return self._state.save(path, self._bound_state(), metadata)

    def alone_is_finite(self, update: TensorSource, base: TensorSource) -> bool:
        """The server step alone on ``update`` as the mean delta, a slice at a time (the
        state's slices are read, never changed)."""
        template = self._round_template("check an update")
        scratch = Scratch()
        with arithmetic_threads():
            for name, spec in template.items():
                if spec.dtype not in FLOAT_DTYPES:
                    continue
                numel = math.prod(spec.shape)
                for (start, stop, d), (_, _, b) in zip(
                    flat_slices(update, name, numel, self._scratch),
                    flat_slices(base, name, numel, scratch),
                    strict=True,
                ):
                    delta = d.to(torch.float64, copy=True)
                    values, state = self._step(delta, b, self._state.slice(name, start, stop))
                    if not all(bool(torch.isfinite(t).all()) for t in (values, *state)):
                        return False  # the model, or the state kept for the next round
        return True

    def _step(
        self, mean_delta: torch.Tensor, base: torch.Tensor, previous: Slices
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The new values (``base``'s dtype) of a float tensor or a flat slice of it, and its
        new state (one tensor per ``state_prefixes``), from the float64 mean delta (may be
        reused), the base and the previous state of the same elements (read-only; None
        before the first round). Element-wise, so a slice gets what the whole tensor gets."""
        if self.server_learning_rate != 1.0:
            mean_delta.mul_(self.server_learning_rate)
        add_chunked_(mean_delta, base)
        return mean_delta.to(base.dtype), ()


def _weights_of(num_samples: int, weight: FoldWeight | None) -> tuple[int | float, int]:
    """The (float, integer) weights of one fold: the plain count, or the capped weight
    computed for this very count."""
    if weight is None:
        return num_samples, num_samples
    if weight.num_samples != num_samples:
        raise ValueError(
            f"the weight was computed for num_samples={weight.num_samples}, but the update "
            f"declares {num_samples}; compute the round's weights from the folded manifests"
        )
    if not (math.isfinite(weight.value) and 0 < weight.value <= num_samples):
        raise ValueError(f"a float weight must be in (0, num_samples], got {weight.value}")
    if not 1 <= weight.integer <= num_samples:
        raise ValueError(f"an integer weight must be in [1, num_samples], got {weight.integer}")
    return weight.value, weight.integer


CHUNK_ELEMENTS = 1 << 18
"""Elements per slice in ``add_chunked_``: bounds its float64 temporary to 2 MiB."""


def add_chunked_(acc: torch.Tensor, other: torch.Tensor, alpha: int | float = 1) -> None:
    """``acc += alpha * other`` in place, in slices when ``other`` must be converted first.

    On CPU, an in-place add whose input has another dtype (a float32 delta into the float64
    accumulator) first copies the whole input to the accumulator's dtype: a temporary as
    large as the biggest tensor, at 8 bytes per element. Slicing bounds that temporary.
    """
    if other.dtype == acc.dtype or acc.numel() <= CHUNK_ELEMENTS:
        acc.add_(other, alpha=alpha)
        return
    flat_acc, flat_other = acc.view(-1), other.reshape(-1)
    for start in range(0, flat_acc.numel(), CHUNK_ELEMENTS):
        stop = start + CHUNK_ELEMENTS
        flat_acc[start:stop].add_(flat_other[start:stop], alpha=alpha)


def _integer_mean_step(name: str, acc: torch.Tensor, n: int, base: torch.Tensor) -> torch.Tensor:
    """``base + round(acc / n)``, ties toward +inf, exact in int64, cast back to base's dtype."""
    mean = torch.div(2 * acc + n, 2 * n, rounding_mode="floor")
    total = base.to(torch.int64) + mean
    info = torch.iinfo(base.dtype)
    if total.numel() and (int(total.min()) < info.min or int(total.max()) > info.max):
        raise ValueError(
            f"the aggregated integer tensor {name!r} does not fit {dtype_name(base.dtype)}; "
            "store it as a wider integer in the model"
        )
    return total.to(base.dtype)
