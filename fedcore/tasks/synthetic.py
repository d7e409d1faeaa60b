"""Built-in task: random data and a model of any size, for benchmarks and tests.

Benchmarks need to vary the one thing that dominates a federated round's cost, the model's
size (``params: 100_000_000`` builds a ~100M-parameter MLP), without downloading anything.
The data are learnable rather than pure noise: a fixed random linear "teacher", shared by
all clients, labels Gaussian inputs, so loss goes down and accuracy up over rounds and a
broken update path shows.

Config (``spec.task.config``, each optional):

* ``params`` (1,000,000): target parameter count; the hidden width is solved for it.
* ``depth`` (3): linear layers (>= 2); the middle ones are ``hidden x hidden``.
* ``features`` (64), ``classes`` (10): input width and classes.
* ``kind`` (``classification``): or ``regression`` (one output, MSE, ``noise`` std 0.1).
* ``samples`` (512): samples per client; ``testSamples`` (1024): the held-out set.
* the ``SupervisedTask`` keys: ``optimizer``, ``lr``, ``localEpochs``, ``batchSize``...
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from fedcore.errors import TaskError
from fedcore.tasks.base import SupervisedTask, TaskContext, TrainConfig, derive_seed, seeded


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic task's own keys of ``spec.task.config``."""

    params: int = 1_000_000
    """Target parameter count; the built model is within a hidden unit's worth of it."""
    depth: int = 3
    """Linear layers: input -> hidden, (depth - 2) x hidden -> hidden, hidden -> output."""
    features: int = 64
    classes: int = 10
    kind: Literal["classification", "regression"] = "classification"
    noise: float = 0.1
    """Std of the Gaussian noise added to regression targets."""
    samples: int = 512
    """Training samples of each client (all of them, before sharding over ranks)."""
    test_samples: int = 1024

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SyntheticConfig:
        values: dict[str, Any] = {}
        for key, attr, low in (
            ("params", "params", 1),
            ("depth", "depth", 2),
            ("features", "features", 1),
            ("classes", "classes", 2),
            ("samples", "samples", 1),
            ("testSamples", "test_samples", 1),
        ):
            if key in config:
                value = config[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise TaskError(
                        f"task.config.{key}: must be an integer >= {low} (got {value!r})"
                    )
                values[attr] = value
        kind = config.get("kind", "classification")
        if kind not in ("classification", "regression"):
            raise TaskError(
                f"task.config.kind: must be 'classification' or 'regression' (got {kind!r})"
            )
        values["kind"] = kind
        noise = config.get("noise", 0.1)
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
            raise TaskError(f"task.config.noise: must be a number >= 0 (got {noise!r})")
        values["noise"] = float(noise)
        return cls(**values)

    @property
    def outputs(self) -> int:
        return self.classes if self.kind == "classification" else 1

    def hidden(self) -> int:
        """Hidden width whose model comes closest to ``params`` (at least 1)."""
        # params(h) = a*h^2 + b*h + c for a = depth-2 square layers.
        a = self.depth - 2
        b = self.features + 1 + a + self.outputs
        c = self.outputs - self.params
        h = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
        best = max(1, round(h))
        return min(
            (best - 1, best, best + 1), key=lambda w: (w < 1, abs(self.count(w) - self.params))
        )

    def count(self, hidden: int) -> int:
        """Parameters of the model with this hidden width."""
        a = self.depth - 2
        return (
            self.features * hidden
            + hidden
            + a * (hidden * hidden + hidden)
            + hidden * self.outputs
            + self.outputs
        )


class SyntheticTask(SupervisedTask):
    """An MLP of a chosen size on teacher-labelled Gaussian data."""

    defaults: ClassVar[TrainConfig] = TrainConfig(
        optimizer="sgd", lr=0.05, momentum=0.9, local_epochs=1, batch_size=64
    )

    def config(self, ctx: TaskContext) -> SyntheticConfig:
        return SyntheticConfig.from_config(ctx.config)

    def is_classification(self, ctx: TaskContext) -> bool:
        return self.config(ctx).kind == "classification"

    def build_model(self, ctx: TaskContext) -> nn.Module:
        cfg = self.config(ctx)
        hidden = cfg.hidden()
        with seeded(ctx.derive_seed("synthetic-init")):
            layers: list[nn.Module] = [nn.Linear(cfg.features, hidden), nn.ReLU()]
            for _ in range(cfg.depth - 2):
                layers += [nn.Linear(hidden, hidden), nn.ReLU()]
            layers.append(nn.Linear(hidden, cfg.outputs))
            return nn.Sequential(*layers)

    def train_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        """``samples`` fresh samples per client (a different stream for each client)."""
        cfg = self.config(ctx)
        who = "all" if ctx.client_index is None else ctx.client_index
        return self._data(ctx, cfg, cfg.samples, ("synthetic-train", who))

    def test_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        cfg = self.config(ctx)
        return self._data(ctx, cfg, cfg.test_samples, ("synthetic-test",))

    def _data(
        self, ctx: TaskContext, cfg: SyntheticConfig, n: int, purpose: tuple[object, ...]
    ) -> TensorDataset:
        teacher_gen = torch.Generator().manual_seed(derive_seed(ctx.seed, "synthetic-teacher"))
        # Scaled so scores (logits, regression targets) have unit variance at any width.
        teacher = torch.randn(cfg.features, cfg.outputs, generator=teacher_gen)
        teacher /= math.sqrt(cfg.features)
        gen = torch.Generator().manual_seed(ctx.derive_seed(*purpose))
        inputs = torch.randn(n, cfg.features, generator=gen)
        scores = inputs @ teacher
        if cfg.kind == "classification":
            return TensorDataset(inputs, scores.argmax(dim=1))
        targets = scores + cfg.noise * torch.randn(n, 1, generator=gen)
        return TensorDataset(inputs, targets)


task = SyntheticTask()
"""The entrypoint ``fedcore.tasks.synthetic:task``."""
