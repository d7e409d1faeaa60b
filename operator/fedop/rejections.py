"""What a person does about a rejected update, by its reason code.

The aggregator leaves an update out of a round with one of the stable codes of
``fedcore.validation.REJECT_REASONS`` (that module imports torch, which the operator's image
does not carry: a unit test checks this table has exactly those codes). The ``UpdateRejected``
Event ends with the advice for its code; a code this version does not know (a record from a
newer aggregator) gets the catalogue's general advice. ``{client}``, ``{child}`` (the client's
Job) and ``{aggregator}`` (the aggregator's Job) are filled in by ``fedop.events``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

_NOT_THEIRS = (
    "If client {client} did not send it, revoke the credential that wrote it (named above; "
    "with shared credentials every participant holds it)."
)
_SAME_MODEL = (
    "The client's model differs from the aggregator's: make its taskConfig build the same "
    "model as spec.task."
)
_SAME_VERSION = (
    "Check that client {client} runs the same fedkube image as the aggregator. " + _NOT_THEIRS
)
_IF_REPEATS = "Nothing to do unless it repeats; then `kubectl logs job/{child}` shows why."

ADVICE: Final[Mapping[str, str]] = {
    "bad-manifest": _SAME_VERSION,
    "bad-signature": "It is not signed with client {client}'s key (Secret {child}-key). "
    + _NOT_THEIRS,
    "wrong-base-round": "The client trained from another round (restarted or slow). " + _IF_REPEATS,
    "wrong-base-model": "The client trained from a model that is not this round's global. "
    + _IF_REPEATS,
    "too-large": "Make client {client}'s taskConfig build the same model as spec.task. "
    + _NOT_THEIRS,
    "malformed-update": _SAME_VERSION,
    "missing-tensor": _SAME_MODEL,
    "unknown-tensor": _SAME_MODEL,
    "shape-mismatch": _SAME_MODEL,
    "dtype-mismatch": "Client {client} uploaded narrower deltas than the job allows: set "
    "spec.strategy.updateDtype (bfloat16 or int8) for every client, or run the same fedkube "
    "version on client {client}.",
    "non-finite": "Client {client}'s training diverged (NaN or inf): lower its learning rate "
    "or check its data (`kubectl logs job/{child}`).",
    "constant-changed": "Client {client}'s task changes a constant of the model (a bool "
    "tensor such as a mask) while training: keep it fixed.",
    "out-of-range": "An integer tensor of client {client} left its dtype's range: check the "
    "task's integer buffers and the num_samples the client declares.",
    "not-selected": "Nothing to do if client {client} just joined or restarted. " + _NOT_THEIRS,
    "non-finite-aggregate": "With it the global model would hold NaN or inf: lower client "
    "{client}'s learning rate, or set spec.strategy.clipNorm.",
    "internal-error": "The aggregator failed on this update (a bug): `kubectl logs "
    "job/{aggregator}` has the traceback; please report it.",
    "changed-during-round": "The update was rewritten while the round closed: check that "
    "only one process writes as client {client}.",
}
