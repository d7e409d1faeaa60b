"""Reading one client's update out of the store without trusting it: sizes before bytes.

An update slot holds whatever its writer put there. Before the aggregator reads a byte of a
manifest or downloads an update file it asks the store for their sizes (``ObjectStore.size``:
a HEAD on S3, a ``stat`` locally) and refuses what is larger than it would ever accept, so a
multi-GB "manifest" or update costs one metadata request, not a download. The sizes are
checked again on what was read (an object replaced between the two requests gains nothing),
and ``fedcore.validation`` then checks everything else. A sharded update (a manifest that
lists shards and no ``<client>.safetensors``) has its shards sized and downloaded next to the
update's path (``fedcore.sharded_update``); validation assembles them.

Every refusal is an ``UpdateRejected`` with a reason code from ``fedcore.validation``.
Trouble with the store itself (``StoreUnavailable``) is not the update's fault and is raised
as is, for the aggregator to try again later.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from fedcore import layout
from fedcore.errors import IntegrityError, ObjectNotFound, UpdateRejected
from fedcore.records import MAX_MANIFEST_BYTES
from fedcore.sharded_update import fetch_shards, shards_dir
from fedcore.store import ObjectStore


def fetch_update(
    store: ObjectStore, r: int, client: str, update_path: Path, *, max_update_bytes: int
) -> bytes:
    """Download ``client``'s update for round ``r`` to ``update_path``; return its manifest.

    Raises ``UpdateRejected`` (``bad-manifest``, ``too-large``, ``malformed-update``) when
    an object is too large, missing, or does not match its recorded digest.
    """
    manifest_key, update_key = layout.manifest_key(r, client), layout.update_key(r, client)
    try:
        manifest_size = store.size(manifest_key)
    except ObjectNotFound as e:
        raise UpdateRejected(
            client, "malformed-update", f"the manifest {manifest_key} vanished after listing"
        ) from e
    if manifest_size > MAX_MANIFEST_BYTES:
        raise UpdateRejected(
            client,
            "bad-manifest",
            f"the manifest is {manifest_size} bytes, more than the {MAX_MANIFEST_BYTES} "
            "allowed (read from the store's metadata, nothing was downloaded)",
        )
    try:
        update_size = store.size(update_key)
    except ObjectNotFound as e:
        sharded = _sharded(store, manifest_key, update_path, r, client, max_update_bytes)
        if sharded is not None:
            return sharded
        raise UpdateRejected(
            client, "malformed-update", f"the manifest exists but {update_key} does not"
        ) from e
    if update_size > max_update_bytes:
        raise UpdateRejected(
            client,
            "too-large",
            f"the update file is {update_size} bytes, more than the {max_update_bytes} "
            "allowed (read from the store's metadata, nothing was downloaded)",
        )
    try:
        manifest = store.get_bytes(manifest_key)
        store.get_file(update_key, update_path)
    except ObjectNotFound as e:
        raise UpdateRejected(
            client, "malformed-update", f"{e}; it vanished between its size and its read"
        ) from e
    except IntegrityError as e:  # bytes differ from the digest stored with them
        raise UpdateRejected(client, "malformed-update", str(e)) from e
    return manifest


def _sharded(
    store: ObjectStore,
    manifest_key: str,
    update_path: Path,
    r: int,
    client: str,
    max_update_bytes: int,
) -> bytes | None:
    """A sharded update's manifest after downloading its shards (``fedcore.sharded_update``)
    next to ``update_path``; None when the manifest lists no shards (or does not parse:
    validation rejects it then, naming the problem)."""
    try:
        raw = store.get_bytes(manifest_key)
    except ObjectNotFound as e:
        raise UpdateRejected(client, "malformed-update", f"{e}; it vanished after listing") from e
    except IntegrityError as e:
        raise UpdateRejected(client, "malformed-update", str(e)) from e
    try:
        shards = layout.UpdateManifest.model_validate_json(raw).shards
    except ValidationError:
        return None
    if not shards:
        return None
    fetch_shards(
        store, r, client, shards, shards_dir(update_path), max_update_bytes=max_update_bytes
    )
    return raw


__all__ = ["fetch_update"]
