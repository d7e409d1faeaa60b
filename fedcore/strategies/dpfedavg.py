"""DP-FedAvg: client-level differential privacy by clipping and Gaussian noise on the server.

The update rule (McMahan et al., 2018, "Learning differentially private recurrent language
models"; fixed denominator, equal client weights), for the clients folded in round ``t``::

    s_k = min(1, C / ||Δ_k||)                           clip each whole delta to norm C
    w_{t+1} = w_t + η · (Σ_k s_k Δ_k + N(0, (z_Δ C)^2 I)) / m

where ``m`` is the number of clients *selected* for the round (not the number that reported)
and ``η`` is ``serverLearningRate``.

Why the sensitivity holds. The privacy unit is one client: a neighbouring run is one where
one client's updates are all replaced by zero updates (zero-out adjacency, Kairouz et al.,
2021). fedkube publishes who was selected and who participated (``round.json``), so the
usual add/remove-a-client notion would be broken by the record itself; zero-out keeps every
public field the same. Each clipped delta has norm at most ``C``, so the sum moves by at most
``C`` when one client's delta becomes zero: the sum with ``N(0, (z C)^2)`` noise is the
Gaussian mechanism with noise multiplier ``z``. Three choices keep that bound honest:

* **Equal weights.** FedAvg weighs ``Δ_k`` by ``num_samples``, which the client declares: a
  client declaring 10^12 samples would own the round, and its sensitivity would be the whole
  ``C`` over the mean of the others. Here every folded update weighs 1 (``num_samples`` is
  checked and otherwise ignored), so no declaration lets a client escape the bound.
* **A fixed denominator.** Dividing by the number of updates that arrived would make the
  scale depend on who reported; ``m`` is the number selected, known before the round starts
  (``expected_clients``, set by the aggregator). A client that misses the deadline simply
  contributes zero, as in the neighbouring run. (Called in-process without it, e.g. by a
  benchmark, the denominator is the number of updates folded.)
* **Integer tensors are not aggregated.** A counter such as BatchNorm's ``num_batches_tracked``
  would publish each client's local step count, unclipped and unnoised: the global model
  keeps the base value (bool tensors, constants, too). Every float tensor, BatchNorm's
  running statistics included, is part of the clipped, noised delta.

Adaptive clipping (Andrew et al., 2021, "Differentially private learning with adaptive
clipping"). The bound follows the ``gamma``-quantile of the update norms: each folded update
contributes ``b_k - 1/2`` with ``b_k = [||Δ_k|| <= C]`` (centred: a zeroed-out client
contributes 0, so the count's sensitivity is 1/2), the sum gets ``N(0, sigma_b^2)`` noise, and::

    b̄ = 1/2 + (Σ_k (b_k - 1/2) + N(0, sigma_b^2)) / m,       C <- C · exp(-η_C (b̄ - gamma))

The count is a second Gaussian query on the same data: releasing both is equivalent to one
Gaussian mechanism with ``z^-2 = z_Δ^-2 + (2 sigma_b)^-2``. ``strategy.dp.noiseMultiplier`` is
that combined ``z`` (what the accountant charges), and the updates get
``z_Δ = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, a little more noise than ``z``, as in Andrew et al.
and TensorFlow Federated. The bound is strategy state (``clip/bound``): a restarted
aggregator clips exactly as one that never stopped.

Noise. Drawn in ``finalize`` from ``noise_key`` (``fedcore.strategies.dp_noise``: secret to
the aggregator, derived per round from the folded updates, a ChaCha20 stream per tensor),
added to the float64 sum slice by slice. Without a key (in-process use) a random one is
drawn each round: private, not reproducible.

Accounting is not here: the aggregator asks ``fedcore.privacy`` for epsilon after every
round, from ``z`` and the rounds each client was selected for.

Memory and time: as FedAvg's (``fedcore.strategies.fedavg``): a float64 accumulator, ``2M``
for a float32 model of ``M`` bytes, one read buffer, plus one slice of noise (2 MiB of
keystream, a few 2 MiB temporaries) in ``finalize``. Time per fold: two reads of the update
(its norm, then the sum), as FedAvg with clipping; ``finalize`` adds drawing ``P`` normals
(ChaCha20 and Box-Muller, linear in the model). One float per folded update is kept (its
norm) for the count.

With ``accumulator="disk"`` (``spec.aggregator.accumulator``) the sum of clipped deltas lives
in a file on local disk (``fedcore.strategies.disk_accumulator``, float tensors only): a
fold first reads the update a slice at a time for its norm (the norm is summed by the slice
in both modes, ``clipping.update_norm``), then folds it scaled, slice by slice; ``finalize``
reads the sum a slice at a time, adds that slice's noise and streams the new model into its
file. Each tensor's noise is one stream read in row-major order, and the in-memory path
draws it in the same ``dp_noise.SLICE_ELEMENTS`` pieces the disk slices are made of, so
both modes add the same normals to the same elements: the models are equal bit for bit, and
the noise's standard deviation and its key are the same. Memory is then a few slices,
whatever the model's size; disk is ``2M``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from fedcore.spec import DPSpec, StrategySpec
from fedcore.strategies.base import (
    Strategy,
    arithmetic_threads,
    averageable_template,
    check_num_samples,
    check_update,
)
from fedcore.strategies.clipping import BOUND_KEY, clip_scale, update_norm
from fedcore.strategies.disk_accumulator import DiskAccumulator, flat_slices
from fedcore.strategies.dp_noise import NoiseKey, NormalStream
from fedcore.strategies.fedavg import add_chunked_
from fedcore.strategies.weighting import FoldWeight
from fedcore.weights import (
    FLOAT_DTYPES,
    Scratch,
    Template,
    Tensors,
    TensorSource,
    TensorSpec,
    check_same_structure,
)
from fedcore.weights_stream import StreamingWeightsWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al.'s geometric quantile tracking (module docstring)."""

    target_unclipped_quantile: float
    """``gamma``: the share of updates the bound aims to leave unclipped."""
    learning_rate: float
    """``η_C``: step of the geometric update of the bound."""
    clipped_count_stddev: float
    """``sigma_b``: standard deviation of the noise on the centred count of unclipped updates."""


def update_noise_multiplier(noise_multiplier: float, adaptive: AdaptiveClipping | None) -> float:
    """``z_Δ``, the noise multiplier of the updates' sum, for a combined ``z`` (module
    docstring); ``z`` itself with a fixed bound."""
    if adaptive is None:
        return noise_multiplier
    rest = noise_multiplier**-2 - (2 * adaptive.clipped_count_stddev) ** -2
    if not rest > 0:
        raise ValueError(
            f"clipped_count_stddev={adaptive.clipped_count_stddev} must be more than "
            f"noise_multiplier/2 ({noise_multiplier / 2:g}): the count would spend the whole "
            "privacy budget"
        )
    return float(rest**-0.5)


class DPFedAvg(Strategy):
    """Equal-weight mean of clipped deltas plus Gaussian noise, over a fixed denominator."""

    name: ClassVar[str] = "dpfedavg"
    disk_accumulator: ClassVar[bool] = True

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: float,
        adaptive: AdaptiveClipping | None = None,
        server_learning_rate: float = 1.0,
    ) -> None:
        for what, value in (
            ("noise_multiplier", noise_multiplier),
            ("clip_norm", clip_norm),
            ("server_learning_rate", server_learning_rate),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{what} must be a finite number > 0, got {value}")
        if adaptive is not None and not 0 < adaptive.target_unclipped_quantile < 1:
            raise ValueError(
                "target_unclipped_quantile must be in (0, 1), got "
                f"{adaptive.target_unclipped_quantile}"
            )
        self.noise_multiplier = noise_multiplier
        """``z``: what the accountant charges per round (update and count queries together)."""
        self.update_noise_multiplier = update_noise_multiplier(noise_multiplier, adaptive)
        """``z_Δ``: the noise on the sum of clipped updates, in units of the bound."""
        self.adaptive = adaptive
        self.clip_bound = clip_norm
        """The bound this round's updates are clipped to (adapts after each round)."""
        self.round_clip_bound = clip_norm
        """The bound the last finalized round clipped at (for its record)."""
        self.server_learning_rate = server_learning_rate
        self.expected_clients: int | None = None
        """``m``: clients selected for the round, the fixed denominator. Set by the aggregator
        before ``finalize``; None: the number of updates folded."""
        self.noise_key: NoiseKey | None = None
        """The round's secret noise key (``NoiseKey.for_round``). Set by the aggregator before
        ``finalize``; None: a random key each round (private, not reproducible)."""
        self._template: dict[str, TensorSpec] | None = None
        self._acc: dict[str, torch.Tensor] = {}
        self._disk: DiskAccumulator | None = None
        self._scratch = Scratch()
        self._norms: list[float] = []
        self._num_samples = 0
        self._broken = False

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> DPFedAvg:
        if spec.dp is None:
            raise ValueError("dpfedavg needs strategy.dp (noiseMultiplier, clipNorm, delta)")
        return cls.from_dp_spec(spec.dp, server_learning_rate=spec.server_learning_rate)

    @classmethod
    def from_dp_spec(cls, dp: DPSpec, *, server_learning_rate: float = 1.0) -> DPFedAvg:
        adaptive = dp.adaptive_clipping
        return cls(
            noise_multiplier=dp.noise_multiplier,
            clip_norm=dp.clip_norm,
            adaptive=None
            if adaptive is None
            else AdaptiveClipping(
                target_unclipped_quantile=adaptive.target_unclipped_quantile,
                learning_rate=adaptive.learning_rate,
                clipped_count_stddev=adaptive.clipped_count_stddev,
            ),
            server_learning_rate=server_learning_rate,
        )

    @property
    def num_updates(self) -> int:
        return len(self._norms)

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def begin_round(self, template: Template) -> None:
        specs = averageable_template(template, self.name)
        self._acc = {}
        self._close_disk()
        self._template = specs
        if self.accumulator == "disk":  # integer tensors are not aggregated: no region
            floats = {n: s for n, s in specs.items() if s.dtype in FLOAT_DTYPES}
            self._disk = DiskAccumulator(floats, self.accumulator_dir)
        with arithmetic_threads():
            for name, spec in self._template.items():
                if spec.dtype in FLOAT_DTYPES and self._disk is None:
                    self._acc[name] = torch.zeros(spec.shape, dtype=torch.float64)
        self._norms = []
        self._num_samples = 0
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

    def fold(
        self, update: TensorSource, num_samples: int, *, weight: FoldWeight | None = None
    ) -> None:
        """Add ``min(1, C/||Δ||) Δ``; every update weighs 1 whatever ``num_samples`` says."""
        template = self._round_template("fold an update")
        check_num_samples(num_samples)
        if weight is not None:
            raise ValueError(
                f"{self.name} weighs every update equally and takes no capped weight "
                "(strategy.maxWeightShare does not apply)"
            )
        check_update(template, update)
        with arithmetic_threads():
            norm = update_norm(update, template.items(), self._scratch)
        if not math.isfinite(norm):
            raise ValueError(f"{update!r} has a norm of {norm}; validated updates are finite")
        scale = clip_scale(norm, self.clip_bound)
        self._broken = True  # until every tensor is in: an I/O error half-way spoils acc
        with arithmetic_threads():
            for name, acc in self._acc.items():
                add_chunked_(acc, update.get(name, self._scratch), alpha=scale)
            if self._disk is not None:
                for name, region in self._disk.regions.items():
                    for start, stop, d in flat_slices(update, name, region.numel, self._scratch):
                        acc = self._disk.read(name, start, stop)
                        add_chunked_(acc, d, alpha=scale)
                        self._disk.write(name, start, acc)
        self._broken = False
        self._norms.append(norm)
        self._num_samples += num_samples

    def denominator(self) -> int:
        """``m``: the clients selected for the round, or the updates folded when unknown."""
        m = self.expected_clients if self.expected_clients is not None else self.num_updates
        if m < self.num_updates:
            raise ValueError(
                f"{self.num_updates} updates were folded but only {m} clients were selected; "
                "the fixed denominator must count every selected client"
            )
        return m

    def _begin_finalize(self, base: TensorSource) -> dict[str, TensorSpec]:
        template = self._round_template("finalize")
        if not self._norms:
            raise ValueError(
                "cannot finalize a round into which no update was folded; a round needs at "
                "least one accepted update"
            )
        check_same_structure(
            template, base.template(), left_name="the model", right_name=repr(base)
        )
        return template

    def _noised(
        self, acc: torch.Tensor, noise: NormalStream, base: torch.Tensor, m: int
    ) -> torch.Tensor:
        """``base + η (acc + noise) / m`` in ``base``'s dtype; ``acc`` (float64, a whole
        tensor or a slice starting at a multiple of ``dp_noise.SLICE_ELEMENTS``) is reused,
        ``noise`` is read on from where the previous slice of the tensor stopped."""
        noise.fill_normal_(acc, self.update_noise_multiplier * self.clip_bound)
        acc.mul_(self.server_learning_rate / m)
        add_chunked_(acc, base)
        return acc.to(base.dtype)

    def finalize(self, base: TensorSource) -> Tensors:
        template = self._begin_finalize(base)
        m = self.denominator()
        key = self.noise_key if self.noise_key is not None else NoiseKey.random()
        out: Tensors = {}
        self._broken = True
        with arithmetic_threads():
            if self._disk is not None:  # the whole model in memory: for tests, small models
                pieces: dict[str, list[torch.Tensor]] = {}
                for name, values in self._disk_results(self._disk, template, base, key, m):
                    pieces.setdefault(name, []).append(values.clone())
                for name, spec in template.items():
                    got = pieces.get(name, [torch.empty(0, dtype=spec.dtype)])
                    out[name] = torch.cat(got).reshape(spec.shape)
            for name, spec in template.items() if self._disk is None else ():
                b = base.get(name, self._scratch)
                if spec.dtype in FLOAT_DTYPES:
                    acc = self._acc.pop(name)
                    out[name] = self._noised(acc, key.stream(name), b, m)
                    del acc
                else:  # counters and constants keep the base value (module docstring)
                    out[name] = b.clone()
        self._end_round(key, m)
        return out

    def _disk_results(
        self, disk: DiskAccumulator, template: dict[str, TensorSpec], base: TensorSource,
        key: NoiseKey, m: int, order: list[str] | None = None,
    ) -> Iterator[tuple[str, torch.Tensor]]:  # fmt: skip
        """The new model's tensors as (name, flat slice) pairs in ``order`` (the template's
        by default), each slice computed as ``finalize`` computes the whole tensor."""
        for name in order if order is not None else list(template):
            spec = template[name]
            noise = key.stream(name) if spec.dtype in FLOAT_DTYPES else None
            for start, stop, b in flat_slices(base, name, math.prod(spec.shape), self._scratch):
                if noise is None:
                    yield name, b  # counters and constants keep the base value
                    continue
                yield name, self._noised(disk.read(name, start, stop), noise, b, m)

    def finalize_to_file(
        self, base: TensorSource, path: Path, metadata: Mapping[str, str | int]
    ) -> list[str]:
        """With the disk accumulator, stream the new model into ``path`` slice by slice
        (never whole in memory); otherwise as ``Strategy.finalize_to_file``."""
        if self._disk is None:
            return super().finalize_to_file(base, path, metadata)
        template = self._begin_finalize(base)
        m = self.denominator()
        key = self.noise_key if self.noise_key is not None else NoiseKey.random()
        bad: set[str] = set()
        self._broken = True
        with arithmetic_threads(), StreamingWeightsWriter(path, template, metadata) as out:
            for name, values in self._disk_results(self._disk, template, base, key, m, out.order):
                if values.dtype in FLOAT_DTYPES and not bool(torch.isfinite(values).all()):
                    bad.add(name)
                out.write(name, values)
        self._end_round(key, m)
        return sorted(bad)

    def _end_round(self, key: NoiseKey, m: int) -> None:
        """Forget the round and move the adaptive clipping bound."""
        self._broken = False
        self.round_clip_bound = self.clip_bound
        if self.adaptive is not None:
            self.clip_bound = self._next_bound(key, m)
        self._template = None
        self._close_disk()
        self._scratch = Scratch()
        self._norms = []
        self._num_samples = 0

    def _close_disk(self) -> None:
        if self._disk is not None:
            self._disk.close()
            self._disk = None

    def _next_bound(self, key: NoiseKey, m: int) -> float:
        """Andrew et al.'s geometric step from the noised share of unclipped updates."""
        adaptive = self.adaptive
        if adaptive is None:
            return self.clip_bound
        centred = sum((1.0 if n <= self.clip_bound else 0.0) - 0.5 for n in self._norms)
        noise = float(key.count_stream().normals(1)[0]) * adaptive.clipped_count_stddev
        unclipped = 0.5 + (centred + noise) / m
        step = -adaptive.learning_rate * (unclipped - adaptive.target_unclipped_quantile)
        return self.clip_bound * math.exp(step)

    def alone_is_finite(self, update: TensorSource, base: TensorSource) -> bool:
        """Whether the update alone, clipped, gives a finite model (the noise is not drawn:
        it is finite by construction, and a round's noise is drawn once, in finalize); read
        a slice at a time."""
        template = self._round_template("check an update")
        scratch = Scratch()
        with arithmetic_threads():
            norm = update_norm(update, template.items(), scratch)
            if not math.isfinite(norm):
                return False
            m = self.expected_clients or 1
            alpha = clip_scale(norm, self.clip_bound) * self.server_learning_rate / m
            for name, spec in template.items():
                if spec.dtype not in FLOAT_DTYPES:
                    continue
                numel = math.prod(spec.shape)
                for (_, _, d), (_, _, b) in zip(
                    flat_slices(update, name, numel, self._scratch),
                    flat_slices(base, name, numel, scratch),
                    strict=True,
                ):
                    delta = d.to(torch.float64, copy=True).mul_(alpha)
                    add_chunked_(delta, b)
                    if not bool(torch.isfinite(delta.to(spec.dtype)).all()):
                        return False
        return True

    def state_dict(self) -> Tensors:
        """``clip/bound`` with adaptive clipping (the bound the next round clips at)."""
        if self.adaptive is None:
            return {}
        return {BOUND_KEY: torch.tensor([self.clip_bound], dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        rest = {k: v for k, v in state.items() if k != BOUND_KEY}
        if rest:
            super().load_state_dict(rest)  # refuses keys this strategy does not keep
        if BOUND_KEY not in state:
            return
        if self.adaptive is None:
            raise ValueError(
                f"the state holds an adaptive clipping bound ({BOUND_KEY!r}) but "
                "strategy.dp has no adaptiveClipping; was the state written by another spec?"
            )
        bound = state[BOUND_KEY]
        if bound.shape != (1,) or bound.dtype != torch.float64 or not 0 < float(bound[0]) < 1e300:
            raise ValueError(f"{BOUND_KEY!r} must be one float64 number > 0, got {bound}")
        self.clip_bound = float(bound[0])
        self.round_clip_bound = self.clip_bound


__all__ = ["AdaptiveClipping", "DPFedAvg", "update_noise_multiplier"]
