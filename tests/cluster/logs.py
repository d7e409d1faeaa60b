"""Where container logs live: one file per container run, kept after the pod is gone.

Layout: ``<root>/<namespace>/<pod>/<pod-uid>/<container>/<restart>.log`` (stdout and stderr
interleaved, as ``kubectl logs`` shows them). Tests read them directly (also after the pod is
deleted); ``kubectl logs`` reads them through the kubelet's log endpoint.
"""

from __future__ import annotations

from pathlib import Path


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, namespace: str, pod: str, uid: str, container: str, restart: int) -> Path:
        return self.root / namespace / pod / uid / container / f"{restart}.log"

    def runs(
        self, namespace: str, pod: str, container: str | None = None, uid: str | None = None
    ) -> list[Path]:
        """Log files of one container, oldest run first (newest pod incarnation by default)."""
        pod_dir = self.root / namespace / pod
        if uid is None:
            incarnations = [p for p in pod_dir.glob("*") if p.is_dir()]
            if not incarnations:
                return []
            uid_dir = max(incarnations, key=lambda p: p.stat().st_mtime)
        else:
            uid_dir = pod_dir / uid
        if container is None:
            containers = sorted(p for p in uid_dir.glob("*") if p.is_dir())
            if not containers:
                return []
            container_dir = containers[0]
        else:
            container_dir = uid_dir / container
        return sorted(container_dir.glob("*.log"), key=lambda p: int(p.stem))

    def read(
        self,
        namespace: str,
        pod: str,
        container: str | None = None,
        *,
        previous: bool = False,
        uid: str | None = None,
    ) -> str:
        """The current (or previous) run's log; "" when there is none yet."""
        runs = self.runs(namespace, pod, container, uid)
        index = -2 if previous else -1
        if len(runs) < abs(index):
            return ""
        return runs[index].read_text(errors="replace")
