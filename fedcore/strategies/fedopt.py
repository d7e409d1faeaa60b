"""FedOpt (Reddi et al., 2021, "Adaptive Federated Optimization"): FedAdam, FedYogi, FedAdagrad.

The averaged client delta ``Δ̄ = Σ w_k/w · Δ_k`` (FedAvg's fold, with any weight cap and
clipping) is the (negative) pseudo-gradient of an adaptive server optimizer. Per element,
following Algorithm 2 of the paper::

    m_t = β1 · m_{t-1} + (1 - β1) · Δ̄
    v_t = v_{t-1} + Δ̄²                                      fedadagrad
    v_t = β2 · v_{t-1} + (1 - β2) · Δ̄²                      fedadam
    v_t = v_{t-1} - (1 - β2) · Δ̄² · sign(v_{t-1} - Δ̄²)      fedyogi
    w_{t+1} = w_t + η · m_t / (sqrt(v_t) + τ)

with ``m_{-1} = v_{-1} = 0`` and no bias correction (as Flower's FedAdagrad/FedYogi and the
paper's algorithm; ``τ`` keeps the first step finite). ``η`` is ``serverLearningRate``: an
adaptive step moves each coordinate by up to about ``η`` per round, so values such as 0.01
to 0.1 (the paper's grid) fit, not FedAvg's 1.0. Defaults: ``β1 = 0.9``, ``β2 = 0.99``,
``τ = 1e-3`` (the paper's recommendation).

State and resume. ``m`` and ``v`` are kept per float tensor in ``promote(model dtype,
float32)`` (``first_moment/<name>``, ``second_moment/<name>`` in
``rounds/NNNNNN/strategy.safetensors``), computed in float64 from the kept values and rounded
once for keeping; the step uses the float64 values. Each round reads the moments as kept, so
a restarted aggregator that reloads them produces bit-identical models, exactly like FedAvgM.
Integer and bool tensors follow FedAvg's policy (no optimizer).

Memory and time: folding is FedAvg's (``2M`` accumulator for a float32 model of ``M`` bytes);
the two moments add ``2M``, so the aggregator's peak is about ``4M`` plus a few float64
temporaries of the largest tensor during ``finalize``. Time grows linearly with the model
(a few element-wise passes per tensor at finalize) and with the updates' bytes (the fold).
With ``accumulator="disk"`` the moments live on local disk with the sum
(``fedcore.strategies.server_state``), the step runs a slice at a time (every operation is
element-wise, so the bytes are the in-memory ones) and memory is a few slices of float64
temporaries whatever ``M``; disk holds the sum (``2M``), the previous and the new moments
(``2M`` each) and the state's safetensors copy while it is uploaded.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch

from fedcore.spec import StrategySpec
from fedcore.strategies.base import server_state_dtype
from fedcore.strategies.fedavg import FedAvg
from fedcore.strategies.server_state import Slices

Variant = Literal["fedadam", "fedyogi", "fedadagrad"]
FIRST = "first_moment/"
SECOND = "second_moment/"
DEFAULT_BETA1 = 0.9
"""Paper and Flower default: the first moment averages over about 10 rounds."""
DEFAULT_BETA2 = 0.99
"""Paper and Flower default for FedAdam and FedYogi (FedAdagrad has no β2)."""
DEFAULT_TAU = 1e-3
"""Reddi et al. find τ = 1e-3 works well across tasks; it bounds the first steps."""


class FedOpt(FedAvg):
    """FedAvg's averaged delta driving an adaptive server optimizer (one of three variants)."""

    variant: ClassVar[Variant]
    state_prefixes: ClassVar[dict[str, str]] = {
        FIRST: "the first moment",
        SECOND: "the second moment",
    }

    def __init__(
        self,
        *,
        server_learning_rate: float = 1.0,
        beta1: float | None = None,
        beta2: float | None = None,
        tau: float | None = None,
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
        self.beta1 = DEFAULT_BETA1 if beta1 is None else beta1
        """``β1``: decay of the first moment."""
        self.beta2 = DEFAULT_BETA2 if beta2 is None else beta2
        """``β2``: decay of the second moment (FedAdam, FedYogi)."""
        self.tau = DEFAULT_TAU if tau is None else tau
        """``τ``: added to ``sqrt(v)``; the adaptivity's floor."""
        for field, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise ValueError(f"{field} must be in [0, 1), got {value}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {self.tau}")

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> FedOpt:
        return cls(
            server_learning_rate=spec.server_learning_rate,
            beta1=spec.beta1,
            beta2=spec.beta2,
            tau=spec.tau,
            max_weight_share=spec.max_weight_share,
            clip_norm=spec.clip_norm,
            clip_quantile=spec.clip_quantile,
        )

    def _moments(self, delta: torch.Tensor, previous: Slices) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m_t, v_t)`` in float64 from the kept ``m_{t-1}``, ``v_{t-1}`` (read-only)."""
        first_before, second_before = previous
        first = delta * (1.0 - self.beta1)
        if first_before is not None:
            first.add_(first_before.to(torch.float64), alpha=self.beta1)
        square = delta * delta
        v_prev = (
            second_before.to(torch.float64, copy=True)  # a copy: it is updated in place
            if second_before is not None
            else torch.zeros_like(square)
        )
        if self.variant == "fedadagrad":
            second = v_prev.add_(square)
        elif self.variant == "fedadam":
            second = v_prev.mul_(self.beta2).add_(square, alpha=1.0 - self.beta2)
        else:  # fedyogi
            sign = torch.sign(v_prev - square)
            second = v_prev.sub_(square.mul_(sign), alpha=1.0 - self.beta2)
        return first, second

    def _step(
        self, mean_delta: torch.Tensor, base: torch.Tensor, previous: Slices
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        first, second = self._moments(mean_delta, previous)
        # ``η · m_t / (sqrt(v_t) + τ)`` in float64, added to the base
        step = first.mul(self.server_learning_rate).div_(second.sqrt().add_(self.tau))
        keep = server_state_dtype(base.dtype)
        return step.add_(base).to(base.dtype), (first.to(keep), second.to(keep))


class FedAdam(FedOpt):
    """FedOpt with Adam's second moment (an exponential average of ``Δ̄²``)."""

    name: ClassVar[str] = "fedadam"
    variant: ClassVar[Variant] = "fedadam"


class FedYogi(FedOpt):
    """FedOpt with Yogi's second moment (additive, moves toward ``Δ̄²`` by a fixed rate)."""

    name: ClassVar[str] = "fedyogi"
    variant: ClassVar[Variant] = "fedyogi"


class FedAdagrad(FedOpt):
    """FedOpt with Adagrad's second moment (the running sum of ``Δ̄²``; ``β2`` unused)."""

    name: ClassVar[str] = "fedadagrad"
    variant: ClassVar[Variant] = "fedadagrad"


__all__ = ["FedAdagrad", "FedAdam", "FedOpt", "FedYogi"]
