"""A minimal JSON client for the Kubernetes API, used by the process kubelet and the daemon.

The kubelet needs a dozen calls (list/watch pods, patch status, token requests, leases) and
must know exactly what goes on the wire: which patch type, which fields. A thin urllib3 layer
over the admin certificate says that plainly and does no model (de)serialisation; tests keep
using the official ``kubernetes`` client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server (``status`` is the HTTP code).

    Transport failures (refused, reset, timed out) surface as ``ConnectionError`` instead.
    """

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


@dataclass(frozen=True)
class Credentials:
    server: str
    ca: Path
    cert: Path
    key: Path


class Rest:
    def __init__(self, creds: Credentials, *, pool_size: int = 16) -> None:
        self.server = creds.server.rstrip("/")
        self._http = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            ca_certs=str(creds.ca),
            cert_file=str(creds.cert),
            key_file=str(creds.key),
            cert_reqs="CERT_REQUIRED",
            retries=False,
        )

    def _url(self, path: str, params: Mapping[str, Any] | None) -> str:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return self.server + path + (("?" + urlencode(query)) if query else "")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
    ) -> JSON:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            resp = self._http.request(
                method,
                self._url(path, params),
                body=data,
                headers=headers,
                timeout=urllib3.Timeout(connect=5.0, read=timeout_s),
            )
        except urllib3.exceptions.HTTPError as e:
            raise ConnectionError(f"{method} {path}: {e}") from e
        text = resp.data.decode(errors="replace")
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, method, path, text)
        result: JSON = json.loads(text) if text else {}
        return result

    def get(self, path: str, **params: Any) -> JSON:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> JSON:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> JSON:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, content_type: str = STRATEGIC_MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Any = None) -> JSON:
        return self.request("DELETE", path, body)

    def watch(self, path: str, *, timeout_s: int = 60, **params: Any) -> Iterator[JSON]:
        """Watch events (``{"type", "object"}``) until the server ends the watch."""
        query = {**params, "watch": "true", "timeoutSeconds": timeout_s}
        try:
            resp = self._http.request(
                "GET",
                self._url(path, query),
                headers={"Accept": "application/json"},
                preload_content=False,
                timeout=urllib3.Timeout(connect=5.0, read=timeout_s + 15),
            )
        except urllib3.exceptions.HTTPError as e:
            raise ConnectionError(f"WATCH {path}: {e}") from e
        try:
            if resp.status != 200:
                raise ApiError(resp.status, "WATCH", path, resp.read().decode(errors="replace"))
            buffer = b""
            for chunk in resp.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except urllib3.exceptions.HTTPError as e:
            raise ConnectionError(f"WATCH {path}: {e}") from e
        finally:
            resp.release_conn()
            resp.close()

    def close(self) -> None:
        self._http.clear()
