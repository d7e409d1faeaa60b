"""Every error the operator raises on purpose, in one small hierarchy.

::

    FedopError
    ├── SettingsError      a FEDKUBE_* environment variable of the operator is malformed
    ├── ApiError           the Kubernetes API refused or failed a request (.status, .transient)
    │   └── ChildRefused   the API server refused a child built from the spec (400/422)
    └── OwnershipConflict  a child's name is taken by an object this FederatedJob does not own

Spec problems are ``fedcore.errors.SpecError`` (the same messages ``fedkube validate`` prints);
store trouble is the ``fedcore.errors.StoreError`` family. The handlers turn these into kopf's
``PermanentError`` / ``TemporaryError`` at the edge.
"""

from __future__ import annotations


class FedopError(Exception):
    """Base of every error raised on purpose by the operator."""


class SettingsError(FedopError):
    """An environment variable that configures the operator has a value it cannot use."""


class ApiError(FedopError):
    """A Kubernetes API request failed.

    ``status`` is the HTTP status (0 when no response came back); ``transient`` says whether
    retrying the same request later may succeed (throttling, server errors, timeouts,
    conflicts on a stale read).
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)

    @property
    def transient(self) -> bool:
        return self.status in (0, 408, 409, 429) or self.status >= 500


class ChildRefused(ApiError):
    """The API server refused to create a child object as invalid (HTTP 400/422).

    The builders pass parts of the spec through verbatim (resources, volumes, tolerations), so
    this is the spec's fault, not the cluster's: retrying cannot help, fixing the spec can.
    """


class OwnershipConflict(FedopError):
    """An object with a child's deterministic name exists but belongs to someone else.

    Typically a FederatedJob of the same name was deleted and its children are still being
    garbage-collected; the operator waits for them to go instead of adopting them.
    """
