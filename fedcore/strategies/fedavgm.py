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

With ``accumulator="disk"`` the momentum lives on local disk too
(``fedcore.strategies.server_state``): each slice of the sum is stepped with the same slice
of the previous momentum, and the new momentum is written out slice by slice, then streamed
into ``strategy.safetensors``; memory is a few slices whatever the model's size, and the
model and the state are bit for bit the in-memory ones.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from fedcore.spec import StrategySpec
from fedcore.strategies.base import server_state_dtype
from fedcore.strategies.fedavg import FedAvg, add_chunked_
from fedcore.strategies.server_state import Slices

MOMENTUM_PREFIX = "momentum/"
"""State keys are ``momentum/<tensor name>``, so a state blob says what it holds."""


class FedAvgM(FedAvg):
    """FedAvg whose averaged delta drives a server SGD-with-momentum step."""

    name: ClassVar[str] = "fedavgm"
    state_prefixes: ClassVar[dict[str, str]] = {MOMENTUM_PREFIX: "the server momentum"}

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

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> FedAvgM:
        return cls(
            server_learning_rate=spec.server_learning_rate,
            server_momentum=spec.server_momentum,
            max_weight_share=spec.max_weight_share,
            clip_norm=spec.clip_norm,
            clip_quantile=spec.clip_quantile,
        )

    def _step(
        self, mean_delta: torch.Tensor, base: torch.Tensor, previous: Slices
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        (momentum,) = previous
        if momentum is not None:
            add_chunked_(mean_delta, momentum, alpha=self.server_momentum)
        # Keep the rounded momentum (what is persisted and reloaded) and step with the exact
        # float64 one: a resumed aggregator sees the same rounded m_t as one that never
        # stopped, and with beta = 0 the step is FedAvg's to the bit.
        kept = mean_delta.to(server_state_dtype(base.dtype), copy=True)
        values, _ = super()._step(mean_delta, base, ())
        return values, (kept,)
