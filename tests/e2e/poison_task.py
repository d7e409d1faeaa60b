"""A digits task whose client, when its task config says ``poison: nan``, trains as usual and
then sets one weight to NaN: every update it sends is rejected (``non-finite``), a known
count for the tests that check what the rejections show (metrics, Events)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedcore.tasks.base import TaskContext
from fedcore.tasks.digits import DigitsTask


class PoisonedDigits(DigitsTask):
    def train(
        self, model: nn.Module, loader: DataLoader[Any], ctx: TaskContext
    ) -> dict[str, float]:
        metrics = super().train(model, loader, ctx)
        if ctx.config.get("poison") == "nan":
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = math.nan
        return metrics


task = PoisonedDigits()
