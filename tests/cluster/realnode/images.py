"""Small test images for real nodes, written as OCI archives without any image builder.

A real node pulls nothing: every image a pod names is imported into its containerd first
(``ctr -n k8s.io images import``). The images fedkube ships come from ``make images``; the lane
itself needs two more, both ``FROM scratch`` with one static binary, which this module writes
as OCI image-layout tarballs (one uncompressed layer, a config, a manifest, an index):

- ``fedkube-test/pause``: the pod sandbox's pause process (``fktools pause``), named in the
  containerd config as ``sandbox_image``;
- ``fedkube-test/tools``: ``fktools`` (``memhog`` to exceed a memory limit, ``get`` to fetch
  a URL from inside a pod) and MinIO, so MinIO runs as a pod.

The tools binary is built from ``fktools/`` with the Go toolchain into the fedkube cache,
keyed by its source's hash (a warm run builds nothing).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.binaries import cache_root
from tests.cluster.errors import ComponentFailed

FKTOOLS_SRC = Path(__file__).resolve().parent / "fktools"
PAUSE_IMAGE = "docker.io/fedkube-test/pause:1"
TOOLS_IMAGE = "docker.io/fedkube-test/tools:1"


@dataclass(frozen=True)
class ImageFile:
    """One file of an image: where it lands (absolute path in the image) and where it comes from."""

    path: str
    source: Path


def fktools_binary() -> Path:
    """The static ``fktools`` binary, built once per source version."""
    digest = hashlib.sha256()
    for f in sorted(FKTOOLS_SRC.iterdir()):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    out = cache_root() / "bin" / f"fktools-{digest.hexdigest()[:16]}" / "fktools"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    result = subprocess.run(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out) + ".tmp", "."],
        cwd=FKTOOLS_SRC,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ComponentFailed(f"building fktools failed: {result.stderr.strip()}")
    Path(str(out) + ".tmp").replace(out)
    return out


def _layer(files: list[ImageFile]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for f in files:
            parts = f.path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(f.path.strip("/"))
            info.size, info.mode = f.source.stat().st_size, 0o755
            with f.source.open("rb") as src:
                tar.addfile(info, src)
        # /tmp: MinIO and Go's os.TempDir expect it.
        info = tarfile.TarInfo("tmp")
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(info)
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.removeprefix("sha256:"))
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return digest, len(data)


def write_oci_archive(
    archive: Path, ref: str, files: list[ImageFile], entrypoint: list[str]
) -> Path:
    """Write a one-layer image named ``ref`` as an OCI image-layout tarball."""
    layer = _layer(files)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "WorkingDir": "/", "User": "65532:65532"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w") as tar:
        config_bytes = json.dumps(config).encode()
        config_digest, config_size = _blob(tar, config_bytes)
        _, layer_size = _blob(tar, layer)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
        manifest_digest, manifest_size = _blob(tar, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": manifest_size,
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        for name, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(archive)
    return archive


def lane_images(out_dir: Path, minio: Path) -> list[Path]:
    """The pause and tools archives (rewritten only when their inputs changed)."""
    tools = fktools_binary()
    key = hashlib.sha256(
        f"{tools}:{tools.stat().st_size}:{minio}:{minio.stat().st_size}".encode()
    ).hexdigest()[:16]
    pause = out_dir / f"pause-{key}.tar"
    toolbox = out_dir / f"tools-{key}.tar"
    if not pause.is_file():
        write_oci_archive(pause, PAUSE_IMAGE, [ImageFile("/fktools", tools)], ["/fktools", "pause"])
    if not toolbox.is_file():
        write_oci_archive(
            toolbox,
            TOOLS_IMAGE,
            [ImageFile("/fktools", tools), ImageFile("/minio", minio)],
            ["/fktools"],
        )
    return [pause, toolbox]
