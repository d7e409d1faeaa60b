"""Loading a weights file into a ``torch.nn.Module`` one tensor at a time.

Why it exists: ``model.load_state_dict(load_weights(path))`` holds the whole file in memory
next to the model, twice the model's size; the aggregator evaluates every round's global
model, and with the disk accumulator nothing else it does grows with the model. Here each
tensor is read alone and handed to ``load_state_dict`` (so modules' own loading hooks run as
usual), and the names are checked as a strict ``load_state_dict`` checks them.
"""

from __future__ import annotations

from torch import nn

from fedcore.weights import WeightsReader


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
    for name in saved:
        model.load_state_dict({name: saved.get(name)}, strict=False)


__all__ = ["load_into"]
