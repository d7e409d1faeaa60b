"""Loading a weights file into a ``torch.nn.Module`` a few tensors at a time.

Why it exists: ``model.load_state_dict(load_weights(path))`` holds the whole file in memory
next to the model, twice the model's size; the aggregator evaluates every round's global
model, and with the disk accumulator nothing else it does grows with the model. Here tensors
are read in batches of about ``BATCH_BYTES`` and each batch is handed to ``load_state_dict``
(so modules' own loading hooks run as usual; batches, not single tensors, because every call
walks the whole module tree), and the names are checked as a strict ``load_state_dict``
checks them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedcore.weights import WeightsReader

BATCH_BYTES = 64 << 20
"""Bytes of tensors read before they are copied into the model (plus one tensor at most)."""


def load_into(model: nn.Module, saved: WeightsReader) -> None:
    """Copy every tensor of ``saved`` into ``model``; ``ValueError`` when the names differ
    from the model's ``state_dict`` keys (as ``load_state_dict(strict=True)`` would refuse)."""
    wanted = set(model.state_dict())
    have = set(saved.keys())
    if wanted != have:
        missing, unexpected = sorted(wanted - have), sorted(have - wanted)
        raise ValueError(
            f"{saved.path} does not fit the task's model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; was it written for another model?"
        )
    batch: dict[str, torch.Tensor] = {}
    size = 0
    for name in saved:
        spec = saved.spec(name)
        batch[name] = saved.get(name)
        size += math.prod(spec.shape) * spec.dtype.itemsize
        if size >= BATCH_BYTES:
            model.load_state_dict(batch, strict=False)
            batch, size = {}, 0
    if batch:
        model.load_state_dict(batch, strict=False)


__all__ = ["load_into"]
