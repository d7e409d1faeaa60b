"""Krum and Multi-Krum (Blanchard et al., 2017), ``spec.strategy.name: krum``.

With ``N`` updates of which at most ``f = byzantineClients`` are hostile, each update's
score is the sum of its squared distances to its ``N - f - 2`` nearest other updates; the
``m = krumSelect`` updates with the lowest scores are kept (``m = 1``: Krum, ``m > 1``:
Multi-Krum) and averaged weighted by their ``num_samples``, as Multi-Krum does (FedAvg's
arithmetic, ``fedcore.strategies.fedavg``). Krum needs ``N > 2f + 2``: the spec refuses a
quorum (``minClients``, or every client) below ``2f + 3``, so a round waits for that many
updates by the ordinary quorum rules, and ``finalize`` refuses fewer as a last line.

Distances are over the float tensors (integer counters and bool constants carry no
direction); they are built tensor by tensor, slice by slice, from the kept update files
(``fedcore.strategies.spool``) into an N x N float64 matrix. Ties in score go to the
canonical order of the kept files, so the selection does not depend on arrival order.

Memory: the N x N matrix, one N x slice float64 stack (``spool.SLICE_BYTES``), then FedAvg's
(about 2x one model). Disk: N x model. Time: O(N^2 x P) for the distances, plus reading every
update once more, plus FedAvg over the ``m`` selected.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from fedcore.spec import StrategySpec
from fedcore.strategies.base import Strategy, arithmetic_threads
from fedcore.strategies.fedavg import FedAvg
from fedcore.strategies.spool import (
    Spool,
    check_dtypes,
    check_unweighted_fold,
    check_update,
    slice_elements,
    step_is_finite,
)
from fedcore.strategies.weighting import FoldWeight
from fedcore.weights import (
    FLOAT_DTYPES,
    Template,
    Tensors,
    TensorSource,
    TensorSpec,
    WeightsReader,
)


def min_updates(byzantine: int) -> int:
    """Fewest updates Krum can score with ``byzantine`` hostile ones: ``2f + 3``."""
    return 2 * byzantine + 3


def squared_distances(
    readers: list[WeightsReader], template: dict[str, TensorSpec]
) -> torch.Tensor:
    """N x N float64 matrix of squared L2 distances between the updates' float tensors."""
    n = len(readers)
    dist = torch.zeros((n, n), dtype=torch.float64)
    step = slice_elements(n)
    for name, spec in template.items():
        if spec.dtype not in FLOAT_DTYPES:
            continue
        numel = 1
        for d in spec.shape:
            numel *= d
        for start in range(0, numel, step):
            stop = min(start + step, numel)
            stacked = torch.stack(
                [r.get_flat_slice(name, start, stop).to(torch.float64) for r in readers]
            )
            for i in range(n - 1):
                diff = stacked[i + 1 :] - stacked[i]
                part = (diff * diff).sum(dim=1)
                dist[i, i + 1 :] += part
                dist[i + 1 :, i] += part
    return dist


def krum_scores(dist: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Each update's sum of squared distances to its ``N - f - 2`` nearest others."""
    n = dist.shape[0]
    nearest = n - byzantine - 2
    scores = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        scores[i] = others.sort().values[:nearest].sum()
    return scores


class Krum(Strategy):
    """Keep the ``krumSelect`` updates closest to their neighbours; FedAvg them."""

    name: ClassVar[str] = "krum"

    def __init__(
        self, *, byzantine_clients: int = 0, krum_select: int = 1, spool_dir: Path | None = None
    ) -> None:
        if byzantine_clients < 0 or krum_select < 1:
            raise ValueError(
                f"byzantine_clients must be >= 0 and krum_select >= 1, got {byzantine_clients} "
                f"and {krum_select}"
            )
        self.byzantine_clients = byzantine_clients
        self.krum_select = krum_select
        self.spool_dir = spool_dir
        self._template: dict[str, TensorSpec] | None = None
        self._spool: Spool | None = None
        self._num_samples = 0
        self.selected: list[int] = []
        """Canonical indices of the updates the last ``finalize`` kept (for logs and tests)."""

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Krum:
        return cls(byzantine_clients=spec.byzantine_clients or 0, krum_select=spec.krum_select or 1)

    @property
    def num_updates(self) -> int:
        return len(self._spool.kept) if self._spool else 0

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def begin_round(self, template: Template) -> None:
        self._template = check_dtypes(template, self.name)
        if self._spool is not None:
            self._spool.close()
        self._spool = Spool(self.spool_dir)
        self._num_samples = 0

    def _round(self, action: str) -> tuple[dict[str, TensorSpec], Spool]:
        if self._template is None or self._spool is None:
            raise RuntimeError(f"cannot {action}: call begin_round(template) first")
        return self._template, self._spool

    def fold(
        self, update: TensorSource, num_samples: int, *, weight: FoldWeight | None = None
    ) -> None:
        template, spool = self._round("fold an update")
        check_unweighted_fold(self.name, num_samples, weight)
        check_update(template, update)
        spool.add(update, num_samples)
        self._num_samples += num_samples

    def alone_is_finite(self, update: TensorSource, base: TensorSource) -> bool:
        template, _ = self._round("check an update")
        with arithmetic_threads():
            return step_is_finite(template, update, base)

    def finalize(self, base: TensorSource) -> Tensors:
        template, spool = self._round("finalize")
        n, f = len(spool.kept), self.byzantine_clients
        if n < min_updates(f):
            raise ValueError(
                f"krum with byzantineClients={f} needs at least {min_updates(f)} updates "
                f"(N > 2f + 2), the round has {n}; raise minClients or lower byzantineClients"
            )
        keep = min(self.krum_select, n - f)
        with arithmetic_threads(), spool.open_all() as opened:
            readers = [r for _, r in opened]
            scores = krum_scores(squared_distances(readers, template), f)
            order = sorted(range(n), key=lambda i: (float(scores[i]), i))
            self.selected = sorted(order[:keep])
            mean = FedAvg()
            mean.begin_round(template)
            for i in self.selected:
                mean.fold(readers[i], opened[i][0].num_samples)
            out = mean.finalize(base)
        self._template = None
        spool.close()
        self._spool = None
        self._num_samples = 0
        return out
