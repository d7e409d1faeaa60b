"""The process kubelet's launch script: volumes land where the pod asked, and a volume over
an ancestor of the checkout (an emptyDir at /tmp with the repo under /tmp) does not hide it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cluster.kubelet.container import launch_script
from tests.cluster.kubelet.volumes import Mount

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="mount namespaces need root and util-linux's unshare (the test cluster needs both)",
)


@needs_root
def test_a_volume_over_an_ancestor_of_the_checkout_keeps_the_checkout_visible(
    tmp_path: Path,
) -> None:
    image = tmp_path / "outer" / "checkout"
    image.mkdir(parents=True)
    (image / "marker").write_text("image\n")
    empty_dir = tmp_path / "volumes" / "tmp"
    empty_dir.mkdir(parents=True)
    target = str(tmp_path / "outer")
    script = tmp_path / "launch.sh"
    script.write_text(
        launch_script(
            hostname="pod-0",
            mounts=[Mount(source=empty_dir, target=target, read_only=False)],
            workdir=str(image),
            header="test",
            keep=[str(image)],
        )
    )
    probe = f"cat marker && touch {target}/scratch && ls {target}"

    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "/bin/sh",
            str(script),
            "/bin/sh",
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    assert out.stdout.split() == ["image", "checkout", "scratch"]
    assert (empty_dir / "scratch").exists()  # writes under the volume went to the volume
    assert not (tmp_path / "outer" / "scratch").exists()
