"""The kubelet's log endpoint, so ``kubectl logs`` (API server -> kubelet) works.

Serves ``GET /containerLogs/<namespace>/<pod>/<container>`` with ``previous``, ``tailLines``,
``limitBytes`` and ``follow``, over TLS with a certificate from the cluster CA, and accepts
only clients with a certificate from the same CA (the API server's kubelet-client identity).
exec, attach and port-forward are not offered.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from tests.cluster.certs import KeyPair
from tests.cluster.logs import LogStore

FOLLOW_POLL_S = 0.2


class LogServer:
    def __init__(
        self,
        host: str,
        serving: KeyPair,
        ca: Path,
        logs: LogStore,
        running: Callable[[str, str, str], bool],
    ) -> None:
        store, is_running = logs, running

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                url = urlparse(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if parts == ["healthz"]:
                    self._send(200, b"ok")
                    return
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._send(404, b"only /containerLogs is served by the process kubelet\n")
                    return
                _, ns, pod, container = parts
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                runs = store.runs(ns, pod, container)
                index = -2 if q.get("previous") == "true" else -1
                if len(runs) < abs(index):
                    self._send(404, f"no logs for {ns}/{pod}/{container}\n".encode())
                    return
                path = runs[index]
                data = path.read_bytes()
                if "tailLines" in q:
                    lines = data.splitlines(keepends=True)
                    data = b"".join(lines[-int(q["tailLines"]) :]) if int(q["tailLines"]) else b""
                if "limitBytes" in q:
                    data = data[: int(q["limitBytes"])]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(data)
                if q.get("follow") != "true" or index == -2:
                    return
                offset = path.stat().st_size
                while is_running(ns, pod, container):
                    time.sleep(FOLLOW_POLL_S)
                    with path.open("rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    if chunk:
                        offset += len(chunk)
                        self.wfile.write(chunk)
                        self.wfile.flush()

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(serving.cert), str(serving.key))
        ctx.load_verify_locations(str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kubelet-logs", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
