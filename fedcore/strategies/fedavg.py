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
also reads and writes the ``2M`` sum once. Subclasses whose server step keeps state of the
model's size (FedAvgM, FedOpt, SCAFFOLD) refuse it (``disk_accumulator``).

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
from typing import ClassVar, Literal

import torch

from fedcore.spec import StrategySpec
from fedcore.strategies.base import (
    MAX_INT_ACCUMULATOR,
    OutOfRange,
    Strategy,
    arithmetic_threads,
    averageable_template,
    check_num_samples,
    check_update,
)
from fedcore.strategies.clipping import (
    BOUND_KEY,
    check_clipping,
    clip_scale,
    quantile,
    update_norm,
)
from fedcore.strategies.disk_accumulator import DiskAccumulator, slices
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

Accumulator = Literal["memory", "disk"]
"""Where FedAvg keeps the round's running sum: in memory (8 bytes per parameter of RAM), or
in a file on local disk, folded slice by slice (``fedcore.strategies.disk_accumulator``)."""


class FedAvg(Strategy):
    """Sample-weighted mean of client deltas, accumulated in float64 (exact int64 for ints)."""

    name: ClassVar[str] = "fedavg"
    disk_accumulator: ClassVar[bool] = True
    """Whether the strategy can keep its sum on disk: False for those whose server step
    keeps O(model) state of its own in memory (momentum, moments, control variates)."""

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
                    out[name] = self._server_step(name, acc, b)
                    del acc  # frees 8 bytes per element before the next tensor is read
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
            for start, stop, d in _flat_slices(update, name, region.numel, self._scratch):
                acc = disk.read(name, start, stop)
                add_chunked_(acc, d, alpha=alpha)
                disk.write(name, start, acc)

    def _disk_results(
        self, disk: DiskAccumulator, template: dict[str, TensorSpec], base: TensorSource,
        order: list[str],
    ) -> Iterator[tuple[str, torch.Tensor]]:  # fmt: skip
        """The new model's tensors as (name, flat slice) pairs, tensor by tensor in ``order``,
        each computed as ``finalize`` computes it in memory."""
        n, n_integer = self._total_weight, self._total_integer_weight
        for name in order:
            spec = template[name]
            numel = math.prod(spec.shape)
            for start, stop, b in _flat_slices(base, name, numel, self._scratch):
                if spec.dtype in FLOAT_DTYPES:
                    acc = disk.read(name, start, stop)
                    acc.div_(n)
                    yield name, self._server_step(name, acc, b)
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
        self._end_round()
        return sorted(bad)

    def state_dict(self) -> Tensors:
        """``clip/bound`` with adaptive clipping (the bound the next round clips at)."""
        if self.clip_quantile is None or self.clip_bound is None:
            return {}
        return {BOUND_KEY: torch.tensor([self.clip_bound], dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        rest = {k: v for k, v in state.items() if k != BOUND_KEY}
        if rest:
            super().load_state_dict(rest)  # refuses keys this strategy does not keep
        if BOUND_KEY in state:
            if self.clip_quantile is None:
                raise ValueError(
                    f"the state holds an adaptive clipping bound ({BOUND_KEY!r}) but the "
                    "strategy has no clipQuantile; was the state written by another spec?"
                )
            bound = state[BOUND_KEY]
            if bound.shape != (1,) or bound.dtype != torch.float64 or not float(bound[0]) > 0:
                raise ValueError(f"{BOUND_KEY!r} must be one float64 number > 0, got {bound}")
            self.clip_bound = float(bound[0])

    def alone_is_finite(self, update: TensorSource, base: TensorSource) -> bool:
        template = self._round_template("check an update")
        scratch = Scratch()
        with arithmetic_threads():
            for name, spec in template.items():
                if spec.dtype not in FLOAT_DTYPES:
                    continue
                delta = update.get(name, self._scratch).to(torch.float64)
                if not self._step_is_finite(name, delta, base.get(name, scratch)):
                    return False
        return True

    def _step_is_finite(self, name: str, delta: torch.Tensor, base: torch.Tensor) -> bool:
        """Whether ``_server_step`` with ``delta`` (float64, may be reused) as the mean delta
        gives finite values in the model's dtype, without changing any state."""
        delta.mul_(self.server_learning_rate)
        add_chunked_(delta, base)
        return bool(torch.isfinite(delta.to(base.dtype)).all())

    def _server_step(self, name: str, mean_delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """The new value of float tensor ``name``; ``mean_delta`` is float64 and may be reused."""
        if self.server_learning_rate != 1.0:
            mean_delta.mul_(self.server_learning_rate)
        add_chunked_(mean_delta, base)
        return mean_delta.to(base.dtype)


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


def _flat_slices(
    source: TensorSource, name: str, numel: int, scratch: Scratch
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, values)`` of each disk-accumulator slice of tensor ``name``, flat: read
    a slice at a time from a file, or sliced from the whole tensor for other sources."""
    if isinstance(source, WeightsReader):
        for start, stop in slices(numel):
            yield start, stop, source.get_flat_slice(name, start, stop)
        return
    whole = source.get(name, scratch).reshape(-1)
    for start, stop in slices(numel):
        yield start, stop, whole[start:stop]


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
