"""FedProx (Li et al., 2020) on the server: FedAvg, unchanged.

FedProx changes the clients' local objective, not the aggregation: each client minimises
its loss plus ``mu/2 ||w - w_global||^2`` (``strategy.proximalMu``; the term lives in
``fedcore.tasks.proximal`` and is added on every DDP rank). The server averages the deltas
as FedAvg does, so this strategy is FedAvg under its own name (memory and time: FedAvg's,
``2M`` for a float32 model of ``M`` bytes, linear in the updates' bytes), and a spec that
names it must set ``proximalMu``.
"""

from __future__ import annotations

from typing import ClassVar

from fedcore.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg on the server; the clients add the proximal term (``strategy.proximalMu``)."""

    name: ClassVar[str] = "fedprox"


__all__ = ["FedProx"]
