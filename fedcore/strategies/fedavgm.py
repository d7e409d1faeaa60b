"""FedAvg with server momentum (FedAvgM; Hsu, Qi and Brown, 2019), which helps on non-IID data.

The averaged client delta ``Δ̄ = Σ n_k/n · Δ_k`` is treated as a (negative) pseudo-gradient
of a server optimizer, SGD with momentum ``β`` and learning rate ``η``::

    m_{t+1} = β · m_t + Δ̄             (m_0 = 0)
    w_{t+1} = w_t + η · m_{t+1}

This is Flower's ``FedAvgM`` with ``m = -v`` (Flower keeps ``v`` over ``w - avg``). With
``β = 0`` and ``η = 1`` it is plain FedAvg, bit for bit.

Folding is FedAvg's (same float64 accumulator, same memory); the momentum adds one buffer per
float tensor in ``promote(model dtype, float32)``, i.e. ``+M`` for a float32 model, so the
aggregator's peak is about ``3M``. ``m`` is computed in float64 and rounded once to that
dtype for keeping; the step itself uses the float64 value. Every round reads the previous
momentum as kept, so a restarted aggregator that reloads the persisted momentum
(``state_dict``/``load_state_dict``, a safetensors blob in the store) produces bit-identical
models. Integer and bool tensors follow FedAvg's policy and get no
momentum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch

from fedcore.spec import StrategySpec
from fedcore.strategies.base import check_server_state, server_state_dtype
from fedcore.strategies.clipping import BOUND_KEY
from fedcore.strategies.fedavg import FedAvg, add_chunked_
from fedcore.weights import Template, Tensors

MOMENTUM_PREFIX = "momentum/"
"""State keys are ``momentum/<tensor name>``, so a state blob says what it holds."""


class FedAvgM(FedAvg):
    """FedAvg whose averaged delta drives a server SGD-with-momentum step."""

    name: ClassVar[str] = "fedavgm"
    disk_accumulator: ClassVar[bool] = False

    def __init__(
        self,
        *,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        max_weight_share: float | None = None,
        clip_norm: float | None = None,
        clip_quantile: float | None = None,
    ) -> None:
        super().__init__(
            server_learning_rate=server_learning_rate,
            max_weight_share=max_weight_share,
            clip_norm=clip_norm,
            clip_quantile=clip_quantile,
        )
        if not (math.isfinite(server_momentum) and 0.0 <= server_momentum < 1.0):
            raise ValueError(
                f"server_momentum must be in [0, 1), got {server_momentum}; "
                "Hsu et al. (2019) use values such as 0.9"
            )
        self.server_momentum = server_momentum
        """``β``: how much of the previous rounds' momentum each round keeps."""
        self._momentum: dict[str, torch.Tensor] = {}

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> FedAvgM:
        return cls(
            server_learning_rate=spec.server_learning_rate,
            server_momentum=spec.server_momentum,
            max_weight_share=spec.max_weight_share,
            clip_norm=spec.clip_norm,
            clip_quantile=spec.clip_quantile,
        )

    def begin_round(self, template: Template) -> None:
        super().begin_round(template)
        check_server_state("the server momentum", self._momentum, template)

    def _server_step(self, name: str, mean_delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        previous = self._momentum.pop(name, None)
        if previous is not None:
            add_chunked_(mean_delta, previous, alpha=self.server_momentum)
            del previous
        # Keep the rounded momentum (what is persisted and reloaded) and step with the exact
        # float64 one: a resumed aggregator sees the same rounded m_t as one that never
        # stopped, and with beta = 0 the step is FedAvg's to the bit.
        self._momentum[name] = mean_delta.to(server_state_dtype(base.dtype), copy=True)
        return super()._server_step(name, mean_delta, base)

    def _step_is_finite(self, name: str, delta: torch.Tensor, base: torch.Tensor) -> bool:
        previous = self._momentum.get(name)
        if previous is not None:
            add_chunked_(delta, previous, alpha=self.server_momentum)
        if not bool(torch.isfinite(delta.to(server_state_dtype(base.dtype))).all()):
            return False  # the momentum kept for the next round would hold inf
        return super()._step_is_finite(name, delta, base)

    def state_dict(self) -> Tensors:
        """``momentum/<name>`` per float tensor (empty before the first finalize), and
        FedAvg's own (the adaptive clipping bound)."""
        momentum = {MOMENTUM_PREFIX + name: m for name, m in sorted(self._momentum.items())}
        return {**super().state_dict(), **momentum}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        momentum: dict[str, torch.Tensor] = {}
        super().load_state_dict({k: v for k, v in state.items() if k == BOUND_KEY})
        for key, tensor in state.items():
            if key == BOUND_KEY:
                continue
            if not key.startswith(MOMENTUM_PREFIX):
                raise ValueError(
                    f"state key {key!r} is not a {self.name} state key (they start with "
                    f"{MOMENTUM_PREFIX!r}); was the state written by another strategy?"
                )
            momentum[key.removeprefix(MOMENTUM_PREFIX)] = tensor.detach().cpu()
        self._momentum = momentum
