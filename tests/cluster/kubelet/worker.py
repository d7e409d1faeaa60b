"""One thread per pod: sandbox, volumes, init containers, containers, restarts, status, deletion.

The worker owns everything the kubelet reports about its pod. It polls its processes a few
times a second, applies the restart policy (with a doubling back-off), patches the pod status
when it changed, and on deletion sends SIGTERM, waits the grace period, sends SIGKILL, reports
the terminal phase and removes the pod object (a zero-grace delete, as a kubelet does).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import threading
import time
from typing import Any

from tests.cluster.kubelet import env as envmod
from tests.cluster.kubelet import status as st
from tests.cluster.kubelet import volumes as vol
from tests.cluster.kubelet.container import (
    ContainerProcess,
    host_mountpoints,
    launch_script,
)
from tests.cluster.kubelet.context import PodContext
from tests.cluster.kubelet.hosts import HostEntry
from tests.cluster.kubelet.refs import MissingReference
from tests.cluster.network import Sandbox
from tests.cluster.rest import ApiError

log = logging.getLogger(__name__)

POLL_S = 0.2
CONFIG_RETRY_S = 2.0
"""How often a container whose Secret/ConfigMap is missing is retried."""
FORCE_DELETE_GRACE_S = 1.0
"""Grace given to processes of a pod whose object vanished (force delete)."""


class PodWorker(threading.Thread):
    def __init__(self, ctx: PodContext, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        super().__init__(name=f"pod {self.namespace}/{self.pod_name}", daemon=True)
        self.ctx = ctx
        self._pod = pod
        self._cv = threading.Condition()
        self._gone = False
        self._shutdown = False
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.init = [
            st.ContainerRecord(c["name"], c.get("image", ""))
            for c in spec.get("initContainers") or []
        ]
        self.main = [st.ContainerRecord(c["name"], c.get("image", "")) for c in spec["containers"]]
        self._specs = {
            c["name"]: c for c in [*(spec.get("initContainers") or []), *spec["containers"]]
        }
        self._procs: dict[str, ContainerProcess] = {}
        self._restart_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._config_retry_at: dict[str, float] = {}
        self.conditions = st.Conditions()
        self.phase: st.Phase = "Pending"
        self.start_time = ""
        self.box: Sandbox | None = None
        self.hostname = self.pod_name[:63]
        self.pod_dir = ctx.pods_dir / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self._volumes: dict[str, Any] | None = None
        self._volumes_synced = 0.0
        self._pending_message = ""
        self._published = ""

    # -- called from the kubelet's watch thread -----------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        with self._cv:
            self._pod = pod
            self._cv.notify_all()

    def gone(self) -> None:
        with self._cv:
            self._gone = True
            self._cv.notify_all()

    def shutdown(self) -> None:
        with self._cv:
            self._shutdown = True
            self._cv.notify_all()

    def running_container(self, container: str) -> bool:
        return container in self._procs

    # -- helpers ------------------------------------------------------------------------------

    def _wait(self, timeout_s: float) -> None:
        with self._cv:
            self._cv.wait(timeout_s)

    @property
    def _deleting(self) -> bool:
        return self._gone or self._shutdown or bool(self._pod["metadata"].get("deletionTimestamp"))

    def _pod_view(self) -> dict[str, Any]:
        """The pod as containers should see it through the downward API (with our addresses)."""
        pod = copy.deepcopy(self._pod)
        status = pod.setdefault("status", {})
        status["hostIP"] = self.ctx.host_ip
        status["hostIPs"] = [{"ip": self.ctx.host_ip}]
        if self.box:
            status["podIP"] = self.box.ip
            status["podIPs"] = [{"ip": self.box.ip}]
        return pod

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}"

    # -- main ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            log.exception("pod %s/%s: kubelet error", self.namespace, self.pod_name)
            self._pending_message = f"process kubelet error: {e}"
            self._kill_all(0)
            self._report_terminal(failed=True)
            self._await_deletion()
            self._finalize()
        finally:
            self._kill_all(0)
            self._release_network()
            shutil.rmtree(self.pod_dir, ignore_errors=True)
            self.ctx.forget(self.uid)

    def _run(self) -> None:
        current = (self._pod.get("status") or {}).get("phase")
        if current in st.TERMINAL:
            self.phase = current
            self._await_deletion()
            self._finalize()
            return
        if self._deleting:
            self._finalize()
            return
        self.start_time = st.now()
        self._create_sandbox()
        self._publish()
        while self._volumes is None and not self._deleting:
            self._prepare_volumes()
        if not self._deleting:
            self._supervise()
        if self._deleting:
            self._terminate_for_deletion()
            self._finalize()
            return
        # Terminal on its own: free the network now, keep the object until someone deletes it.
        self._release_network()
        self._publish()
        self._await_deletion()
        self._finalize()

    def _create_sandbox(self) -> None:
        spec = self._pod["spec"]
        self.hostname = (spec.get("hostname") or self.pod_name)[:63]
        self.box = self.ctx.network.create_sandbox("")
        self.ctx.hosts.add(
            HostEntry(
                uid=self.uid,
                namespace=self.namespace,
                hostname=self.hostname,
                subdomain=spec.get("subdomain") or "",
                ip=self.box.ip,
                file=self.box.hosts_file,
                aliases=tuple(
                    (a["ip"], tuple(a.get("hostnames") or []))
                    for a in spec.get("hostAliases") or []
                ),
            )
        )
        self.pod_dir.mkdir(parents=True, exist_ok=True)

    def _release_network(self) -> None:
        if self.box is not None:
            self.ctx.hosts.remove(self.uid)
            self.ctx.network.destroy_sandbox(self.box)
            self.box = None

    def _prepare_volumes(self) -> None:
        try:
            self._volumes = vol.prepare(
                self._pod_view(), self.pod_dir, self.ctx.lookup, self.ctx.tokens
            )
            self._pending_message = ""
        except (MissingReference, vol.UnsupportedVolume, ValueError, ApiError) as e:
            self._pending_message = f"volumes: {e}"
            for rec in [*self.init, *self.main]:
                rec.state = st.State("waiting", reason="ContainerCreating", message=str(e))
            self._publish()
            self._wait(CONFIG_RETRY_S)

    # -- containers ---------------------------------------------------------------------------

    def _start(self, rec: st.ContainerRecord, restart: bool) -> None:
        spec = self._specs[rec.name]
        pod = self._pod_view()
        node = self._pod["spec"].get("nodeName", "")
        try:
            environ = envmod.container_env(
                pod,
                spec,
                base={
                    **self.ctx.base_env,
                    "HOSTNAME": self.hostname,
                    "HOME": str(self.pod_dir / "home"),
                },
                service=self.ctx.service_env,
                lookup=self.ctx.lookup,
                allocatable=self.ctx.allocatable.get(node, {}),
            )
            argv = envmod.command_line(spec, environ)
            mounts = vol.mounts(spec, self._volumes or {}, environ)
            host_mountpoints(mounts, self.ctx.mountpoints)
        except (MissingReference, vol.UnsupportedVolume, ValueError, ApiError) as e:
            rec.state = st.State("waiting", reason="CreateContainerConfigError", message=str(e))
            retry_at = time.monotonic() + CONFIG_RETRY_S
            self._config_retry_at[rec.name] = self._restart_at[rec.name] = retry_at
            return
        (self.pod_dir / "home").mkdir(exist_ok=True)
        if restart:
            rec.restart_count += 1
        script = self.pod_dir / "launch" / f"{rec.name}.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(
            launch_script(
                hostname=self.hostname,
                mounts=mounts,
                workdir=spec.get("workingDir") or self.ctx.settings.default_workdir,
                keep=[str(self.ctx.settings.default_workdir)],
                header=f"{self.namespace}/{self.pod_name} {rec.name} run {rec.restart_count}",
            )
        )
        if self.box is None:
            raise RuntimeError(f"pod {self.pod_name}: no sandbox to start {rec.name} in")
        proc = ContainerProcess(
            netns=self.box.netns,
            argv=argv,
            env=environ,
            script=script,
            log_path=self.ctx.logs.path(
                self.namespace, self.pod_name, self.uid, rec.name, rec.restart_count
            ),
        )
        self._procs[rec.name] = proc
        rec.restart_pending = False
        rec.state = st.State(
            "running", started_at=st.now(), container_id=f"fedkube-process://{proc.pid}"
        )

    def _reap(self, records: list[st.ContainerRecord], *, init: bool) -> None:
        for rec in records:
            proc = self._procs.get(rec.name)
            if proc is None:
                continue
            code = proc.poll()
            if code is None:
                continue
            proc.kill()  # anything it left behind in its process group
            del self._procs[rec.name]
            done = st.terminated(code, rec.state.started_at, rec.state.container_id)
            policy = self.restart_policy
            if init:
                restart = policy != "Never" and done.exit_code != 0
            else:
                restart = policy == "Always" or (policy == "OnFailure" and done.exit_code != 0)
            if restart and not self._deleting:
                delay = self._backoff.get(rec.name, self.ctx.settings.restart_backoff_initial_s)
                self._backoff[rec.name] = min(delay * 2, self.ctx.settings.restart_backoff_max_s)
                self._restart_at[rec.name] = time.monotonic() + delay
                rec.last_state = done
                rec.restart_pending = True
                rec.state = st.State(
                    "waiting",
                    reason="CrashLoopBackOff",
                    message=f"back-off {delay:g}s restarting failed container={rec.name} "
                    f"pod={self.pod_name}_{self.namespace}({self.uid})",
                )
            else:
                rec.state = done

    def _due(self, rec: st.ContainerRecord) -> bool:
        """Should ``rec`` be started now (first start, restart after back-off, config retry)?"""
        if rec.name in self._procs:
            return False
        now = time.monotonic()
        if rec.restart_pending:
            return now >= self._restart_at.get(rec.name, 0.0)
        if rec.state.kind == "waiting":
            return now >= self._config_retry_at.get(rec.name, 0.0)
        return False

    def _supervise(self) -> None:
        while not self._deleting:
            self._reap(self.init, init=True)
            self._reap(self.main, init=False)
            pending_init = next(
                (
                    c
                    for c in self.init
                    if not (c.state.kind == "terminated" and c.state.exit_code == 0)
                ),
                None,
            )
            if pending_init is not None:
                if self._due(pending_init):
                    self._start(pending_init, restart=pending_init.restart_pending)
            else:
                for rec in self.main:
                    if self._due(rec):
                        self._start(rec, restart=rec.restart_pending)
            self.phase = st.pod_phase(self.init, self.main, self.restart_policy)
            self._publish()
            if self.phase in st.TERMINAL:
                return
            self._sync_volumes()
            self._wait(POLL_S)

    def _sync_volumes(self) -> None:
        """Every ``volume_sync_s``: Secret/ConfigMap updates reach the running containers."""
        now = time.monotonic()
        if self._volumes is None or now < self._volumes_synced + self.ctx.settings.volume_sync_s:
            return
        self._volumes_synced = now
        changed = vol.refresh(self._pod_view(), self._volumes, self.ctx.lookup, self.ctx.tokens)
        if changed:
            log.info("pod %s/%s: updated volumes %s", self.namespace, self.pod_name, changed)

    def _kill_all(self, grace_s: float) -> None:
        """SIGTERM every running container, wait up to ``grace_s``, SIGKILL what is left."""
        if not self._procs:
            return
        for proc in self._procs.values():
            proc.terminate()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in self._procs.values()):
            if self._gone:
                deadline = min(deadline, time.monotonic() + FORCE_DELETE_GRACE_S)
            time.sleep(0.05)
        for name, proc in list(self._procs.items()):
            proc.kill()
            code = proc.poll()
            rec = next(r for r in [*self.init, *self.main] if r.name == name)
            rec.state = st.terminated(
                code if code is not None else -9, rec.state.started_at, rec.state.container_id
            )
            rec.restart_pending = False
        self._procs.clear()

    def _grace_s(self) -> float:
        meta, spec = self._pod["metadata"], self._pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        if self._shutdown:
            return min(float(grace), self.ctx.settings.shutdown_grace_s)
        if self._gone:
            return min(float(grace), FORCE_DELETE_GRACE_S)
        return float(grace)

    def _terminate_for_deletion(self) -> None:
        self._kill_all(self._grace_s())
        for rec in [*self.init, *self.main]:
            if rec.restart_pending or rec.state.kind == "waiting":
                rec.restart_pending = False
                if rec.last_state is not None:
                    rec.state = rec.last_state
        if self.phase not in st.TERMINAL:
            self._report_terminal(failed=False)

    def _report_terminal(self, *, failed: bool) -> None:
        """Move to Succeeded/Failed before the object goes (the Job controller counts it)."""
        ok = not failed and all(
            c.state.kind == "terminated" and c.state.exit_code == 0 for c in self.main
        )
        self.phase = "Succeeded" if ok else "Failed"
        self._release_network()
        self._publish()

    def _await_deletion(self) -> None:
        while not self._deleting:
            self._wait(1.0)

    def _finalize(self) -> None:
        """Remove the pod object once its processes are gone (skipped on shutdown / vanish)."""
        if self._gone or self._shutdown:
            return
        try:
            self.ctx.api.delete(
                self._path,
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s: final delete failed: %s", self.namespace, self.pod_name, e)

    # -- status -------------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        st.update_conditions(
            self.conditions,
            sandbox_ready=self.box is not None,
            init=self.init,
            containers=self.main,
            phase=self.phase,
        )
        status: dict[str, Any] = {
            "phase": self.phase,
            "conditions": self.conditions.to_list(),
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "containerStatuses": [c.to_dict() for c in self.main],
        }
        if self.start_time:
            status["startTime"] = self.start_time
        if self.init:
            status["initContainerStatuses"] = [c.to_dict() for c in self.init]
        if self.box is not None:
            status["podIP"] = self.box.ip
            status["podIPs"] = [{"ip": self.box.ip}]
        if self._pending_message:
            status["message"] = self._pending_message
        return status

    def _publish(self) -> None:
        if self._shutdown or self._gone:
            return
        status = self._status()
        text = json.dumps(status, sort_keys=True)
        if text == self._published:
            return
        try:
            # Strategic merge: conditions merge by type (the scheduler's PodScheduled stays),
            # container status lists are replaced as a whole.
            self.ctx.api.patch(self._path + "/status", {"status": status})
            self._published = text
        except ApiError as e:
            if e.status == 404:
                self.gone()
            else:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.pod_name, e)
