"""A SCAFFOLD client's control variates in the store: the server's ``c`` and its own ``c_i``.

The server's ``c`` is the aggregator's strategy state of the round trained from
(``rounds/NNNNNN/strategy.safetensors``, ``control/<name>`` tensors), read by rank 0 and
checked against the sha256 the round's signed record names; round 0 has none (``c = 0``).

The client's own ``c_i`` lives in ``clients/<client>/scaffold.safetensors``, a slot only the
client's role may read and write (``fedcore.credentials``). It must reflect only committed
participation: the aggregator adds ``Δc_i`` to ``c`` only if it folds the client's update,
which may instead be rejected, arrive late, or never be read (a crash). So the file holds
both sides of the client's last trained round ``p`` (its metadata ``round``):

* ``current/control/<name>``: ``c_i`` before round ``p``;
* ``next/control/<name>``: ``c_i+`` after round ``p`` (``current + Δc_i``).

Reading it to train round ``t`` (``read_client_variate``): with ``p < t`` the client reads
round ``p``'s signed record (committed, since ``t - 1 >= p`` is) and takes ``next`` if it is
among the round's participants, else ``current``. With ``p == t`` (the group crashed after
writing the file, before its manifest committed the update, and trains round ``t`` again)
it takes ``current``; retraining recomputes the same ``next``. ``p > t`` cannot come from
the protocol and is refused. The file is written (``write_client_variate``) before the
update's manifest, so an update the aggregator may fold always has its ``next`` stored. No
file (the first round the client trains): ``c_i = 0``. A client absent from rounds keeps its
file untouched, and its ``c_i`` stays what its last folded round made it.

Everything read is checked (metadata, names, shapes, dtypes, finite values) before use: the
slot may have been written by anyone holding the client's credential, and the state file by
anyone with write access to the store when credentials are shared. A bad file fails the
round with a ``RoundProtocolError`` naming the key and the fix, never a silent reset.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from fedcore import layout
from fedcore.commit_signing import CommitVerifier, UnverifiedRecord, read_round_record
from fedcore.errors import FedcoreError, ObjectNotFound, RoundProtocolError
from fedcore.store import ObjectStore
from fedcore.strategies.scaffold import CONTROL_PREFIX, variate_template
from fedcore.tasks.scaffold import zero_variate
from fedcore.weights import (
    Template,
    Tensors,
    TensorSpec,
    dtype_name,
    open_weights,
    save_weights,
)

log = logging.getLogger("fedcore.client")

VARIATE_KIND = "scaffold-variate"
"""``kind`` in the header metadata of a client's variate file."""
CURRENT = "current/"
NEXT = "next/"
HEADER_SLACK_BYTES = 1 << 20
"""Bytes a variate file may hold beyond its tensors (the safetensors header)."""


def _check_tensors(
    what: str, tensors: Mapping[str, torch.Tensor], want: Mapping[str, TensorSpec], fix: str
) -> None:
    missing = sorted(set(want) - set(tensors))
    unknown = sorted(set(tensors) - set(want))
    if missing or unknown:
        raise RoundProtocolError(
            f"{what} does not fit the model: missing {missing[:5]}, unexpected {unknown[:5]}; {fix}"
        )
    for key, spec in want.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(spec.shape) or t.dtype != spec.dtype:
            raise RoundProtocolError(
                f"{what}: {key!r} is {dtype_name(t.dtype)}{list(t.shape)}, expected "
                f"{dtype_name(spec.dtype)}{list(spec.shape)}; {fix}"
            )
        if not bool(torch.isfinite(t).all()):
            raise RoundProtocolError(f"{what}: {key!r} holds NaN or inf; {fix}")


def read_server_variate(
    store: ObjectStore, record: layout.RoundRecord, model: Template, workdir: Path
) -> Tensors:
    """``c`` as round ``record.round`` committed it (zeros for round 0), checked against the
    record's ``strategy_sha256``, the model and finiteness."""
    if record.round == 0:
        return zero_variate(model)
    key = layout.strategy_state_key(record.round)
    fix = (
        "only the aggregator writes it, so the store was altered; restore it (a new job "
        "starts SCAFFOLD over)"
    )
    if not record.strategy_sha256:
        raise RoundProtocolError(
            f"round {record.round}'s record names no strategy state, but SCAFFOLD's server "
            f"variate is kept there ({store.uri(key)}); the round was committed by an "
            "aggregator that did not run scaffold"
        )
    path = workdir / f"server-variate-{record.round:06d}.safetensors"
    try:
        if store.get_file(key, path) != record.strategy_sha256:
            raise RoundProtocolError(
                f"{store.uri(key)} does not match the sha256 round {record.round}'s signed "
                f"record names ({record.strategy_sha256[:12]}...); {fix}"
            )
        try:
            with open_weights(path) as reader:
                state = reader.load_all()
        except FedcoreError as e:
            raise RoundProtocolError(f"{store.uri(key)} is not safetensors ({e}); {fix}") from e
    except ObjectNotFound as e:
        raise RoundProtocolError(
            f"{store.uri(key)} is missing though round {record.round}'s record names it; {fix}"
        ) from e
    finally:
        path.unlink(missing_ok=True)
    control = {k: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
    _check_tensors(
        f"the server control variate in {store.uri(key)}", control, variate_template(model), fix
    )
    return control


def read_client_variate(
    store: ObjectStore,
    client: str,
    train_round: int,
    verifier: CommitVerifier,
    model: Template,
    workdir: Path,
) -> Tensors:
    """``c_i`` for training round ``train_round``, resolved by the committed records (see the
    module docstring); zeros when the client has no variate yet."""
    key = layout.client_variate_key(client)
    path = workdir / "client-variate.safetensors"
    fix = (
        f"only client {client}'s credential may write it: delete it to restart its variate "
        "from zero (SCAFFOLD then converges more slowly for a while), and find who wrote it"
    )
    where = store.uri(key)
    variates = variate_template(model)
    want = {side + k: s for side in (CURRENT, NEXT) for k, s in variates.items()}
    limit = HEADER_SLACK_BYTES + sum(s.dtype.itemsize * math.prod(s.shape) for s in want.values())
    try:
        size = store.size(key)
        if size > limit:
            raise RoundProtocolError(
                f"{where} is {size} bytes, more than the {limit} a variate of this model "
                f"takes (read from the store's metadata, nothing was downloaded); {fix}"
            )
        store.get_file(key, path)
    except ObjectNotFound:
        return zero_variate(model)
    try:
        with open_weights(path) as reader:
            meta = reader.metadata
            tensors = reader.load_all()
    except FedcoreError as e:
        raise RoundProtocolError(f"{where} is not safetensors ({e}); {fix}") from e
    finally:
        path.unlink(missing_ok=True)
    if meta.get("kind") != VARIATE_KIND or meta.get("client") != client:
        raise RoundProtocolError(
            f"{where} has header metadata {dict(meta)}, not a {VARIATE_KIND} of client "
            f"{client!r}; {fix}"
        )
    text = meta.get("round", "")
    if not text.isdigit() or len(text) > 9:
        raise RoundProtocolError(f"{where}: metadata round {text!r} is not a round; {fix}")
    p = int(text)
    _check_tensors(f"the control variate in {where}", tensors, want, fix)
    if p > train_round:
        raise RoundProtocolError(
            f"{where} was written after training round {p}, but round {train_round} is being "
            f"trained; rounds only advance, so the store was rolled back or altered; {fix}"
        )
    side = CURRENT
    if p < train_round:
        try:
            record = read_round_record(store.get_bytes(layout.round_record_key(p)), p, verifier)
        except (ObjectNotFound, UnverifiedRecord) as e:
            raise RoundProtocolError(
                f"{where} was written in round {p}, whose record cannot be read and verified "
                f"({e}); the store was altered"
            ) from e
        if client in record.participants:
            side = NEXT
        else:
            log.info(
                "round %d did not fold this client's update; its control variate stays as "
                "before that round",
                p,
            )
    return {k: tensors[side + k] for k in variates}


def write_client_variate(
    store: ObjectStore,
    client: str,
    trained_round: int,
    current: Mapping[str, torch.Tensor],
    next_: Mapping[str, torch.Tensor],
    workdir: Path,
) -> None:
    """Store ``c_i`` before (``current``) and after (``next_``) ``trained_round``; call it
    before the round's manifest is written."""
    tensors = {CURRENT + k: v for k, v in current.items()}
    tensors.update({NEXT + k: v for k, v in next_.items()})
    path = workdir / f"client-variate-{trained_round:06d}.safetensors"
    meta = {"kind": VARIATE_KIND, "client": client, "round": str(trained_round)}
    save_weights(path, tensors, meta)
    try:
        store.put_file(layout.client_variate_key(client), path)
    finally:
        path.unlink(missing_ok=True)


__all__ = [
    "VARIATE_KIND",
    "read_client_variate",
    "read_server_variate",
    "write_client_variate",
]
