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
from fedcore.strategies.base import arithmetic_threads
from fedcore.strategies.fedavg import FedAvg
from fedcore.strategies.spool import (
    SpooledStrategy,
    slice_elements,
)
from fedcore.weights import (
    FLOAT_DTYPES,
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


class Krum(SpooledStrategy):
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
        super().__init__(spool_dir=spool_dir)
        self.byzantine_clients = byzantine_clients
        self.krum_select = krum_select
        self.selected: list[int] = []
        """Canonical indices of the updates the last ``finalize`` kept (for logs and tests)."""

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Krum:
        return cls(byzantine_clients=spec.byzantine_clients or 0, krum_select=spec.krum_select or 1)

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
        self._end_round()
        return out
