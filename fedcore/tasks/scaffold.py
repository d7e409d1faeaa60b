"""SCAFFOLD on a client (Karimireddy et al., 2020): the gradient correction and the variate step.

Pure tensor code, no store: ``fedcore.client`` wires it to the round protocol
(``fedcore.variates`` keeps the client's variate), and a benchmark can call it in-process::

    term = ControlCorrection.snapshot(model, server_c, client_c)   # after loading x
    task.train(model, loader, replace(ctx, scaffold=term))          # g + c - c_i per step
    new_c, delta_c = next_variate(x, model.state_dict(), server_c, client_c,
                                  steps=term.steps, sgd=local_sgd(task, ctx),
                                  trainable=trainable_names(model))

``server_c`` and ``client_c`` map ``control/<name>`` (``fedcore.strategies.scaffold.
variate_template``) to tensors; zeros (``zero_variate``) when there is none yet.

The correction. Every local step must follow ``g + c - c_i`` instead of ``g``. It enters as a
loss term, like FedProx's (``fedcore.tasks.proximal``): ``ctx.scaffold(model)`` is
``Σ_p <p, c_p - c_i,p>`` over the trainable parameters, whose gradient is exactly
``c - c_i``. ``SupervisedTask.train`` adds it to every batch's loss before ``backward``; a
task with its own loop does the same, and one that never calls it fails the round
(``require_used``) rather than silently training without the correction. Under DDP every
rank adds the same term (same parameters, same broadcast variates), so DDP's average over
ranks is ``mean g + c - c_i``, the corrected gradient of the group's whole batch; hence the
term is added on every rank, and a hook after DDP's all-reduce is not needed.

The variate step (the paper's option II)::

    c_i+ = c_i - c + (x - y_i) / (K_eff · lr)        Δc_i = c_i+ - c_i

with ``x`` the round's global model, ``y_i`` the model after local training, ``lr`` the local
learning rate and ``K_eff`` the local steps ``K`` counted as SGD with momentum ``β`` moves:
``K_eff = Σ_{m=1..K} (1 - β^m) / (1 - β)``, which is ``K`` for plain SGD (the paper's case).
With heavy-ball momentum (PyTorch's SGD, its buffer fresh each round) the model moves by
``lr · Σ_j g_j (1 - β^(K-j+1)) / (1 - β)``, so ``(x - y_i) / (K_eff · lr)`` is again a mean
of the corrected gradients; dividing by ``K`` alone would overestimate them up to
``1 / (1 - β)`` times (10x at 0.9) and makes SCAFFOLD diverge (seen on digits).

``K`` is counted by the term: one call per step, so a task must call it once per optimizer
step (no gradient accumulation). Under DDP the group makes ``K`` steps together (every rank
takes the same number of batches from its ``DistributedSampler`` shard), and the client
checks that every rank counted the same. ``lr`` and ``β`` come from the task:
``local_sgd(task, ctx)`` calls the task's ``local_sgd(ctx)`` (``SupervisedTask`` returns
``task.config.lr`` and ``momentum``, and refuses Adam/AdamW, whose steps are not
``lr · g``); a task without it fails with a ``TaskError`` naming the method.

The variate covers every float tensor of the model's state (the aggregator sees no more than
names), but only trainable parameters are corrected and move: for the other float tensors
(buffers such as BatchNorm statistics, frozen parameters) ``c_i+`` is zero.

Numerics: ``c_i+`` is computed in float64 from the float32 inputs and rounded once;
``Δc_i = c_i+ - c_i`` likewise. Cost per rank: one copy of the trainable parameters (the
correction ``c - c_i``, ``+M`` on the training device) and one pass over them per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedcore.errors import TaskError
from fedcore.strategies.scaffold import CONTROL_PREFIX, variate_template
from fedcore.weights import Template, Tensors, template_of


def zero_variate(model: Template) -> Tensors:
    """The variate of a client (or server) that has none yet: zeros."""
    return {
        key: torch.zeros(spec.shape, dtype=spec.dtype)
        for key, spec in variate_template(model).items()
    }


def trainable_names(model: nn.Module) -> frozenset[str]:
    """State-dict names of ``model``'s trainable parameters (the unwrapped model's names)."""
    return frozenset(name for name, p in model.named_parameters() if p.requires_grad)


@dataclass(frozen=True, eq=False)
class ControlCorrection:
    """``Σ_p <p, c_p - c_i,p>`` over the trainable parameters: its gradient is ``c - c_i``."""

    corrections: tuple[torch.Tensor, ...]
    """``c - c_i`` per trainable parameter, in ``model.parameters()`` order, detached."""
    calls: list[int] = field(default_factory=lambda: [0])
    """Times the term was computed since the snapshot: the local steps ``K``."""

    @classmethod
    def snapshot(
        cls,
        model: nn.Module,
        server: Mapping[str, torch.Tensor],
        client: Mapping[str, torch.Tensor],
    ) -> ControlCorrection:
        """The correction for ``model`` (unwrapped: its names are the state dict's) from the
        server's and the client's variates (``control/<name>`` tensors)."""
        corrections = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            key = CONTROL_PREFIX + name
            if key not in server or key not in client:
                raise ValueError(
                    f"the control variates have no {key!r} for the trainable parameter "
                    f"{name!r}; they were made for another model"
                )
            c, ci = server[key], client[key]
            if tuple(c.shape) != tuple(p.shape) or tuple(ci.shape) != tuple(p.shape):
                raise ValueError(
                    f"the control variates of {name!r} have shapes {list(c.shape)} and "
                    f"{list(ci.shape)}, the parameter {list(p.shape)}"
                )
            d = c.detach().to(torch.float64) - ci.detach().to(torch.float64)
            corrections.append(d.to(device=p.device, dtype=p.dtype))
        return cls(corrections=tuple(corrections))

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The term for ``model`` now (a scalar with gradients); ``model`` may be the
        DDP-wrapped one (same parameters, same order). Call it once per optimizer step."""
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) != len(self.corrections):
            raise ValueError(
                f"the model has {len(params)} trainable parameters but the SCAFFOLD correction "
                f"was made for {len(self.corrections)}; snapshot it on the model being trained"
            )
        self.calls[0] += 1
        total = torch.zeros((), dtype=torch.float32, device=params[0].device if params else None)
        for p, d in zip(params, self.corrections, strict=True):
            total = total + (p * d).sum()
        return total

    @property
    def steps(self) -> int:
        """``K``: how often the term was computed (one call per optimizer step)."""
        return self.calls[0]

    def require_used(self, entrypoint: str) -> None:
        """Raise ``TaskError`` if the term was never computed since the snapshot."""
        if self.calls[0] == 0:
            raise TaskError(
                f"strategy.name is scaffold but {entrypoint}.train never added "
                "ctx.scaffold(model) to its loss, so it trained without SCAFFOLD's correction "
                "and its step count is unknown; add it to each batch's loss before backward, "
                "once per optimizer step (SupervisedTask.train does)"
            )


@dataclass(frozen=True)
class LocalSGD:
    """What SCAFFOLD must know of a task's local optimizer: SGD's learning rate and
    (heavy-ball, PyTorch's) momentum."""

    lr: float
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"the local learning rate must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ValueError(f"the local momentum must be in [0, 1), got {self.momentum}")

    def effective_steps(self, steps: int) -> float:
        """``K_eff = Σ_{m=1..K} (1 - β^m) / (1 - β)``: ``K`` steps counted as the plain SGD
        steps they move the model by (``K`` itself without momentum)."""
        b = self.momentum
        if b == 0.0:
            return float(steps)
        return (steps - b * (1.0 - b**steps) / (1.0 - b)) / (1.0 - b)


def local_sgd(task: Any, ctx: Any) -> LocalSGD:
    """The task's local optimizer (``task.local_sgd(ctx)``), checked."""
    hook = getattr(task, "local_sgd", None)
    if not callable(hook):
        raise TaskError(
            f"strategy scaffold needs the local optimizer's learning rate, but the task "
            f"{type(task).__name__} has no local_sgd(ctx) method; add one returning "
            "fedcore.tasks.LocalSGD(lr, momentum) of train's SGD (SupervisedTask has it)"
        )
    sgd = hook(ctx)
    if not isinstance(sgd, LocalSGD):
        raise TaskError(
            f"{type(task).__name__}.local_sgd returned a {type(sgd).__name__}; it must return "
            "a fedcore.tasks.LocalSGD"
        )
    return sgd


def next_variate(
    global_model: Mapping[str, torch.Tensor],
    local_model: Mapping[str, torch.Tensor],
    server: Mapping[str, torch.Tensor],
    client: Mapping[str, torch.Tensor],
    *,
    steps: int,
    sgd: LocalSGD,
    trainable: Iterable[str],
) -> tuple[Tensors, Tensors]:
    """``(c_i+, Δc_i)``, option II: ``c_i+ = c_i - c + (x - y_i) / (K_eff · lr)`` for trainable
    parameters, zero for the model's other float tensors; ``Δc_i = c_i+ - c_i``. Tensors are
    on the CPU, keyed ``control/<name>``, in the variate's dtypes."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int (the local optimizer steps), got {steps}")
    variates = variate_template(template_of(global_model))
    moving = frozenset(trainable)
    scale = 1.0 / (sgd.effective_steps(steps) * sgd.lr)
    new: Tensors = {}
    change: Tensors = {}
    for key, spec in variates.items():
        name = key.removeprefix(CONTROL_PREFIX)
        old = client[key].detach().cpu().to(torch.float64)
        if name in moving:
            x = global_model[name].detach().cpu().to(torch.float64)
            y = local_model[name].detach().cpu().to(torch.float64)
            value = (x - y).mul_(scale).add_(old).sub_(server[key].detach().cpu().to(torch.float64))
        else:
            value = torch.zeros(spec.shape, dtype=torch.float64)
        new[key] = value.to(spec.dtype)
        change[key] = (new[key].to(torch.float64) - old).to(spec.dtype)
    return new, change


__all__ = [
    "ControlCorrection",
    "LocalSGD",
    "local_sgd",
    "next_variate",
    "trainable_names",
    "zero_variate",
]
