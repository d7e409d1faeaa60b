"""Every error fedcore raises, in one small hierarchy.

::

    FedcoreError
    ├── SpecError            the job spec is invalid (names the field, the value and the fix)
    ├── StoreError           object storage trouble
    │   ├── ObjectNotFound
    │   ├── ObjectExists     a create-if-absent write found the key taken
    │   ├── IntegrityError   bytes read back do not match their recorded sha256
    │   ├── StoreUnavailable transient: network, 5xx, throttling, after retries
    │   └── CredentialsError scoped store credentials cannot be minted or read
    │       └── StsUnavailable  the store offers no STS AssumeRole for this credential
    ├── UpdateRejected       a client update failed validation (not fatal to the round)
    ├── TaskError            the user's task cannot be imported or breaks the task contract
    ├── BundleError          a site's join bundle is missing, malformed or not its job's
    └── RoundProtocolError   the store's contents contradict the round protocol

Callers catch the narrowest class they can act on; the CLI turns any ``FedcoreError`` into
a one-paragraph message and a non-zero exit instead of a traceback.
"""

from __future__ import annotations


class FedcoreError(Exception):
    """Base of every error raised on purpose by fedcore."""


class SpecError(FedcoreError):
    """A FederatedJob spec is invalid.

    ``problems`` holds one ``(field, message)`` pair per problem so callers (the operator,
    ``fedkube validate``) can list them all instead of stopping at the first. ``places``, when
    given, says where in the source each problem is (``line 7``, ``document 2, line 31``).
    """

    def __init__(
        self,
        problems: list[tuple[str, str]],
        *,
        source: str | None = None,
        places: list[str] | None = None,
    ) -> None:
        self.problems = problems
        self.source = source
        self.places = places or [""] * len(problems)
        where = f"{source}: " if source else ""
        lines = "\n".join(
            f"  - {field}{f' ({place})' if place else ''}: {message}"
            for (field, message), place in zip(problems, self.places, strict=True)
        )
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{where}invalid FederatedJob ({len(problems)} {noun}):\n{lines}")


class StoreError(FedcoreError):
    """Object storage failed in a way the caller may want to report as is."""


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""


class ObjectExists(StoreError):
    """A create-if-absent write found the key already present."""


class IntegrityError(StoreError):
    """The bytes read back do not hash to the sha256 recorded when they were written."""


class StoreUnavailable(StoreError):
    """The store could not be reached or kept failing after retries; worth retrying later."""


class CredentialsError(StoreError):
    """A role's store credentials cannot be minted, written or read (the message names the
    file or field and the fix; it never quotes a secret)."""


class StsUnavailable(CredentialsError):
    """The store cannot mint scoped credentials (no STS, or it refuses AssumeRole for the
    job's credential); the message names ``spec.storage.credentials: shared`` as the opt-out."""


class UpdateRejected(FedcoreError):
    """A client's update failed validation; the round goes on without it.

    ``reason`` is a short stable code (``bad-signature``, ``shape-mismatch``, ...) that ends up
    in ``round.json`` and in Kubernetes Events; the message says what exactly was wrong.
    """

    def __init__(self, client: str, reason: str, detail: str) -> None:
        self.client = client
        self.reason = reason
        self.detail = detail
        super().__init__(f"update from client {client!r} rejected ({reason}): {detail}")


class TaskError(FedcoreError):
    """The task named by ``spec.task.entrypoint`` cannot be loaded or misbehaves."""


class BundleError(FedcoreError):
    """A site's join bundle (``fedcore.join_bundle``) is missing, malformed or does not fit
    its job: the site exports it again (``fedkube site bundle``)."""


class RoundProtocolError(FedcoreError):
    """What the store holds contradicts the round protocol (e.g. a round committed twice)."""
