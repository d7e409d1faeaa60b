"""SCAFFOLD (Karimireddy et al., 2020) on the server: FedAvg plus a server control variate.

On non-IID data each client's local steps drift toward its own optimum. SCAFFOLD keeps a
control variate ``c_i`` per client and ``c`` on the server (estimates of the client's and the
average gradient) and corrects every local gradient ``g`` to ``g + c - c_i``. The clients'
side (the correction, the variate update, where ``c_i`` lives) is ``fedcore.tasks.scaffold``
and ``fedcore.variates``; this module is the server's. Per round, over the folded updates
``S`` of a job of ``N`` clients (``len(spec.clients)``, fixed for the job)::

    x_{t+1} = x_t + η · Σ_{i∈S} w_i Δy_i / Σ_{i∈S} w_i        FedAvg's fold, weights, clipping
    c_{t+1} = c_t + (|S|/N) · mean_{i∈S} Δc_i = c_t + Σ_{i∈S} Δc_i / N     (c_0 = 0)

``η`` is ``serverLearningRate`` (the paper's global step ``η_g``). The model half is FedAvg's
(sample weights, ``maxWeightShare``, clipping of ``Δy``); the variate half is the paper's
unweighted mean, untouched by weights and clipping. With ``c_i`` starting at zero this keeps
``c = mean over all N clients of c_i``, the paper's invariant: a client absent from a round
keeps its ``c_i`` and contributes nothing to ``c`` (``Δc_i = 0``), which is exactly right.

How ``Δc_i`` travels. In the update file itself: next to each float model tensor ``name``'s
delta the client writes ``control/<name>``, its ``Δc_i`` for that tensor in
``promote(model dtype, float32)`` (``variate_template``). So the manifest's sha256 and HMAC
cover it, and ``fedcore.validation`` checks it like the deltas (names, shapes, dtypes, finite
values, the upload's size bound grows by the variate's bytes) against ``update_template``;
a bad one rejects the whole update with the usual reason codes. ``c`` is the strategy state
(``control/<name>``) persisted in ``rounds/NNNNNN/strategy.safetensors``, whose sha256 the
signed round record names: clients read ``c`` from there, and a restarted aggregator that
reloads it produces bit-identical rounds (``c`` is kept rounded once to its dtype, and each
round computes from the kept value).

Numerics: ``Σ Δc_i`` accumulates in float64 in fold order; ``c_t + Σ/N`` is computed in
float64 and rounded once. Integer and bool tensors get no variate (FedAvg's policy).

Memory and time: FedAvg's float64 accumulator (``2M`` for a float32 model of ``M`` bytes),
the variate's float64 accumulator (``2M``) and ``c`` (``M``): about ``5M`` at peak, whatever
the number of clients (updates are read tensor by tensor). Time is linear in the updates'
bytes, which are twice FedAvg's (model delta and variate delta).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from fedcore.spec import StrategySpec
from fedcore.strategies.base import (
    arithmetic_threads,
    check_server_state,
    server_state_dtype,
)
from fedcore.strategies.clipping import BOUND_KEY
from fedcore.strategies.fedavg import FedAvg, add_chunked_
from fedcore.strategies.weighting import FoldWeight
from fedcore.weights import (
    FLOAT_DTYPES,
    Scratch,
    Template,
    Tensors,
    TensorSource,
    TensorSpec,
    check_same_structure,
    dtype_name,
)

CONTROL_PREFIX = "control/"
"""Name prefix of variate tensors: in an update (``Δc_i``), in the strategy state (``c``) and
in a client's own variate file."""


def variate_template(model: Template) -> dict[str, TensorSpec]:
    """The control variate's tensors for a model: ``control/<name>`` per float tensor, in
    ``promote(dtype, float32)`` (``server_state_dtype``)."""
    out: dict[str, TensorSpec] = {}
    for name, spec in sorted(model.items()):
        if name.startswith(CONTROL_PREFIX):
            raise ValueError(
                f"model tensor {name!r} starts with {CONTROL_PREFIX!r}, which SCAFFOLD uses for "
                "its control variates; rename the module"
            )
        if spec.dtype in FLOAT_DTYPES:
            out[CONTROL_PREFIX + name] = TensorSpec(
                tuple(spec.shape), server_state_dtype(spec.dtype)
            )
    return out


class ModelPart:
    """The model deltas of a SCAFFOLD update (a ``TensorSource`` without the variate)."""

    def __init__(self, update: TensorSource) -> None:
        self._update = update

    def template(self) -> dict[str, TensorSpec]:
        wire = self._update.template()
        return {n: s for n, s in wire.items() if not n.startswith(CONTROL_PREFIX)}

    def get(self, name: str, scratch: Scratch | None = None) -> torch.Tensor:
        return self._update.get(name, scratch)

    def __repr__(self) -> str:
        return repr(self._update)


class Scaffold(FedAvg):
    """FedAvg of the model deltas plus the server control variate ``c``."""

    name: ClassVar[str] = "scaffold"
    disk_accumulator: ClassVar[bool] = False

    def __init__(
        self,
        *,
        server_learning_rate: float = 1.0,
        num_clients: int | None = None,
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
        self.num_clients = num_clients
        """``N``: the job's clients (``len(spec.clients)``); the aggregator sets it."""
        self._control: dict[str, torch.Tensor] = {}
        """``c`` by model tensor name (empty: zero, before the first round)."""
        self._control_acc: dict[str, torch.Tensor] = {}
        """``Σ Δc_i`` of this round, float64, by model tensor name."""
        self._variates: dict[str, TensorSpec] = {}

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Scaffold:
        return cls(
            server_learning_rate=spec.server_learning_rate,
            max_weight_share=spec.max_weight_share,
            clip_norm=spec.clip_norm,
            clip_quantile=spec.clip_quantile,
        )

    def update_template(self, model: Template) -> dict[str, TensorSpec]:
        return {**model, **variate_template(model)}

    def begin_round(self, template: Template) -> None:
        n = self.num_clients
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"scaffold needs num_clients, the job's number of clients (>= 1), got {n!r}"
            )
        variates = variate_template(template)  # refuses names that clash, before allocating
        super().begin_round(template)
        check_server_state("the server control variate", self._control, template)
        self._variates = variates
        self._control_acc = {}
        with arithmetic_threads():
            for key, spec in variates.items():
                self._control_acc[key.removeprefix(CONTROL_PREFIX)] = torch.zeros(
                    spec.shape, dtype=torch.float64
                )

    def _check_variate(self, update: TensorSource) -> None:
        wire = update.template()
        got = {n: s for n, s in wire.items() if n.startswith(CONTROL_PREFIX)}
        check_same_structure(
            self._variates,
            got,
            left_name="the control variate",
            right_name=repr(update),
            compare_dtypes=False,
        )
        for key, spec in got.items():
            if spec.dtype not in FLOAT_DTYPES:
                raise ValueError(
                    f"variate tensor {key!r} of {update!r} has dtype {dtype_name(spec.dtype)}; "
                    "a control variate is a float tensor"
                )

    def fold(
        self, update: TensorSource, num_samples: int, *, weight: FoldWeight | None = None
    ) -> None:
        self._round_template("fold an update")
        self._check_variate(update)  # before anything is added
        super().fold(ModelPart(update), num_samples, weight=weight)
        self._broken = True  # until every variate tensor is in
        scratch = Scratch()
        with arithmetic_threads():
            for name, acc in self._control_acc.items():
                add_chunked_(acc, update.get(CONTROL_PREFIX + name, scratch))
        self._broken = False

    def finalize(self, base: TensorSource) -> Tensors:
        self._round_template("finalize")
        n = self.num_clients
        if n is None:  # begin_round checked it
            raise RuntimeError("num_clients is unset")
        out = super().finalize(base)
        control: dict[str, torch.Tensor] = {}
        with arithmetic_threads():
            for name, acc in self._control_acc.items():
                keep = self._variates[CONTROL_PREFIX + name].dtype
                control[name] = self._next_control(name, acc, n).to(keep)
        self._control = control
        self._control_acc = {}
        return out

    def _next_control(self, name: str, total: torch.Tensor, n: int) -> torch.Tensor:
        """``c_t + total / N`` in float64; ``total`` (float64, ``Σ Δc_i``) may be reused."""
        total.div_(n)
        previous = self._control.get(name)
        if previous is not None:
            add_chunked_(total, previous)
        return total

    def alone_is_finite(self, update: TensorSource, base: TensorSource) -> bool:
        self._round_template("check an update")
        n = self.num_clients or 1
        if not super().alone_is_finite(ModelPart(update), base):
            return False
        scratch = Scratch()
        with arithmetic_threads():
            for name in self._control_acc:
                key = CONTROL_PREFIX + name
                total = update.get(key, scratch).to(torch.float64)
                keep = self._variates[key].dtype
                if not bool(torch.isfinite(self._next_control(name, total, n).to(keep)).all()):
                    return False  # the server variate kept for the next round would hold inf
        return True

    def server_variate(self, model: Template) -> Tensors:
        """``c`` keyed ``control/<name>`` as clients read it (zeros before the first round), for
        in-process use such as benchmarks; a job's clients read the persisted state instead."""
        out: Tensors = {}
        for key, spec in variate_template(model).items():
            kept = self._control.get(key.removeprefix(CONTROL_PREFIX))
            out[key] = (
                kept.clone() if kept is not None else torch.zeros(spec.shape, dtype=spec.dtype)
            )
        return out

    def state_dict(self) -> Tensors:
        """``control/<name>`` per float tensor (``c``; empty before the first finalize), and
        FedAvg's own (the adaptive clipping bound)."""
        control = {CONTROL_PREFIX + n: c for n, c in sorted(self._control.items())}
        return {**super().state_dict(), **control}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k == BOUND_KEY})
        control: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            if key == BOUND_KEY:
                continue
            if not key.startswith(CONTROL_PREFIX):
                raise ValueError(
                    f"state key {key!r} is not a {self.name} state key (they start with "
                    f"{CONTROL_PREFIX!r}); was the state written by another strategy?"
                )
            control[key.removeprefix(CONTROL_PREFIX)] = tensor.detach().cpu()
        self._control = control


__all__ = ["CONTROL_PREFIX", "ModelPart", "Scaffold", "variate_template"]
