"""FedProx's proximal term (Li et al., 2020): ``mu/2 · ||w - w_global||^2`` in the local loss.

On non-IID data local training drifts away from the global model; the term pulls each step
back toward the round's global weights. ``strategy.proximalMu`` sets ``mu``; the client
snapshots the round's global parameters after loading them (``ProximalTerm.snapshot``,
detached copies on the training device, taken on every rank) and hands the term to the task
as ``ctx.proximal``; ``SupervisedTask.train`` adds ``ctx.proximal(model)`` to every batch's
loss before ``backward``. A task with its own loop does the same; one that never computes
the term fails the round with a ``TaskError`` (``require_used``) rather than silently
training without it.

DDP stays correct: every rank adds the same term (its parameters and its snapshot are
identical to the other ranks', which DDP and the broadcast of the global model guarantee),
before ``backward``, so each rank's gradient is ``∇loss_rank + mu (w - w_global)`` and DDP's
average over ranks is ``mean ∇loss + mu (w - w_global)``: the FedProx gradient of the
group's whole batch. The term uses the parameters directly (not DDP's forward output); their
gradients from both paths are summed by autograd before DDP's reducer sees them.

Cost: one copy of the trainable parameters per rank (``+M`` of accelerator memory for a
model of ``M`` bytes), and per step a pass over the parameters (time linear in the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fedcore.errors import TaskError


@dataclass(frozen=True, eq=False)
class ProximalTerm:
    """``mu/2 · Σ ||p - p_global||^2`` over the model's trainable parameters."""

    mu: float
    """``strategy.proximalMu``: 0 turns the term off."""
    anchors: tuple[torch.Tensor, ...]
    """Detached copies of the round's global parameters, in ``model.parameters()`` order."""
    calls: list[int] = field(default_factory=lambda: [0])
    """How often the term was computed (one counter): a task whose ``train`` never adds it
    would silently train without FedProx, so the client checks (``require_used``)."""

    @classmethod
    def snapshot(cls, model: nn.Module, mu: float) -> ProximalTerm:
        """The term anchored at ``model``'s current (the round's global) parameters."""
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"proximal mu must be a finite number >= 0, got {mu}")
        anchors = tuple(p.detach().clone() for p in model.parameters() if p.requires_grad)
        return cls(mu=mu, anchors=anchors)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The term for ``model`` now (a scalar with gradients); ``model`` may be the
        DDP-wrapped one (same parameters, same order)."""
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) != len(self.anchors):
            raise ValueError(
                f"the model has {len(params)} trainable parameters but the proximal term was "
                f"anchored on {len(self.anchors)}; anchor it on the model being trained"
            )
        self.calls[0] += 1
        total = torch.zeros((), dtype=torch.float32, device=params[0].device if params else None)
        for p, anchor in zip(params, self.anchors, strict=True):
            total = total + (p - anchor).pow(2).sum()
        return total * (self.mu / 2)

    def require_used(self, entrypoint: str) -> None:
        """Raise ``TaskError`` if the term was never computed since the snapshot."""
        if self.calls[0] == 0:
            raise TaskError(
                f"strategy.proximalMu is {self.mu} but {entrypoint}.train never added "
                "ctx.proximal(model) to its loss, so it trained without FedProx's term; add "
                "it to each batch's loss before backward (SupervisedTask.train does)"
            )


__all__ = ["ProximalTerm"]
