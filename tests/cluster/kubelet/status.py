"""Pod status as the kubelet reports it: container states, phase, conditions.

Pure functions over small records, so the rules (which phase when, what a restart looks like)
are unit-tested without a cluster. The phase rules are the kubelet's ``getPhase``:
  - init containers not done -> Pending (Failed when one failed and nothing restarts it);
  - a container not started yet -> Pending;
  - something running, or about to be restarted -> Running;
  - everything terminated for good -> Succeeded if every exit code is 0, else Failed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
TERMINAL: tuple[Phase, ...] = ("Succeeded", "Failed")
IMAGE_ID = "fedkube-process://host"
"""No image is pulled: the host environment plays the image."""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class State:
    """One of waiting / running / terminated, as in ``ContainerState``."""

    kind: Literal["waiting", "running", "terminated"]
    reason: str = ""
    message: str = ""
    exit_code: int = 0
    signal: int | None = None
    started_at: str = ""
    finished_at: str = ""
    container_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "waiting":
            body: dict[str, Any] = {"reason": self.reason}
            if self.message:
                body["message"] = self.message
            return {"waiting": body}
        if self.kind == "running":
            return {"running": {"startedAt": self.started_at}}
        body = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "containerID": self.container_id,
        }
        if self.signal is not None:
            body["signal"] = self.signal
        if self.message:
            body["message"] = self.message
        return {"terminated": body}


def terminated(exit_code: int, started_at: str, container_id: str) -> State:
    """The state of a process that exited with ``exit_code`` (negative: killed by a signal)."""
    sig = -exit_code if exit_code < 0 else None
    code = 128 + sig if sig is not None else exit_code
    return State(
        kind="terminated",
        reason="Completed" if code == 0 else "Error",
        exit_code=code,
        signal=sig,
        started_at=started_at,
        finished_at=now(),
        container_id=container_id,
    )


@dataclass
class ContainerRecord:
    """What the kubelet knows about one container of a pod."""

    name: str
    image: str
    state: State = field(default_factory=lambda: State("waiting", reason="ContainerCreating"))
    last_state: State | None = None
    restart_count: int = 0
    restart_pending: bool = False
    """Terminated, but the restart policy will start it again (after a back-off)."""

    @property
    def ever_started(self) -> bool:
        return self.state.kind != "waiting" or self.last_state is not None

    def to_dict(self) -> dict[str, Any]:
        running = self.state.kind == "running"
        container_id = self.state.container_id or (
            self.last_state.container_id if self.last_state else ""
        )
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": IMAGE_ID,
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state.to_dict(),
            "lastState": self.last_state.to_dict() if self.last_state else {},
        }
        if container_id:
            out["containerID"] = container_id
        return out


def pod_phase(
    init: list[ContainerRecord], containers: list[ContainerRecord], restart_policy: str
) -> Phase:
    for c in init:
        if c.state.kind == "terminated" and c.state.exit_code == 0:
            continue
        if c.state.kind == "terminated" and not c.restart_pending and restart_policy == "Never":
            return "Failed"
        return "Pending"
    if any(not c.ever_started for c in containers):
        return "Pending"
    if any(c.state.kind != "terminated" or c.restart_pending for c in containers):
        return "Running"
    if all(c.state.exit_code == 0 for c in containers):
        return "Succeeded"
    return "Failed"


class Conditions:
    """Pod conditions the kubelet owns, with transition times kept across updates."""

    TYPES = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")

    def __init__(self) -> None:
        self._state: dict[str, tuple[str, str, str]] = {}

    def set(self, kind: str, status: bool, reason: str = "") -> None:
        value = "True" if status else "False"
        old = self._state.get(kind)
        if old is None or old[0] != value or old[2] != reason:
            changed_at = now() if old is None or old[0] != value else old[1]
            self._state[kind] = (value, changed_at, reason)

    def to_list(self) -> list[dict[str, Any]]:
        out = []
        for kind in self.TYPES:
            if kind in self._state:
                value, at, reason = self._state[kind]
                item: dict[str, Any] = {
                    "type": kind,
                    "status": value,
                    "lastTransitionTime": at,
                    "lastProbeTime": None,
                }
                if reason:
                    item["reason"] = reason
                out.append(item)
        return out


def update_conditions(
    cond: Conditions,
    *,
    sandbox_ready: bool,
    init: list[ContainerRecord],
    containers: list[ContainerRecord],
    phase: Phase,
) -> None:
    cond.set("PodReadyToStartContainers", sandbox_ready)
    init_done = all(c.state.kind == "terminated" and c.state.exit_code == 0 for c in init)
    cond.set("Initialized", init_done, "" if init_done else "ContainersNotInitialized")
    if phase in TERMINAL:
        cond.set("ContainersReady", False, "PodCompleted")
        cond.set("Ready", False, "PodCompleted")
        return
    ready = bool(containers) and all(c.state.kind == "running" for c in containers)
    cond.set("ContainersReady", ready, "" if ready else "ContainersNotReady")
    cond.set("Ready", ready, "" if ready else "ContainersNotReady")
