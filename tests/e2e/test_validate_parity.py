"""``fedkube validate`` and the API server are twins: the parity corpus through both.

Every file of tests/data/invalid-jobs must be refused by both ``fedkube validate`` and
``kubectl apply --dry-run=server`` (the CRD's schema and CEL rules, strict field validation),
except files marked ``# parity: validate-only``, for which the test checks the claim: validate
refuses, the API server accepts. Every file of tests/data/valid-jobs must pass both. One table
lists every disagreement.

kubectl runs once for each directory (all files in one call); each refusal names its file,
so the outcome per file is read off one output. Should a file be named neither as refused nor
as created, that file is applied alone.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedcore.cli import main
from tests.corpus import INVALID_DIR, VALID_DIR, CorpusFile, invalid_files, valid_files

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "federatedjob.yaml"
CRD_NAME = "federatedjobs.fedkube.io"


@dataclass(frozen=True)
class Kubectl:
    path: str
    kubeconfig: str
    namespace: str

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path, "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def kubectl(cluster: Any) -> Iterator[Kubectl]:
    k = Kubectl(str(cluster.kubectl), str(cluster.kubeconfig), f"parity-{uuid.uuid4().hex[:6]}")
    for args in (
        ("apply", "--server-side", "--force-conflicts", "--field-manager=fedkube-e2e",
         "-f", str(CRD)),
        ("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s"),
        ("create", "namespace", k.namespace),
    ):  # fmt: skip
        done = k(*args)
        for _ in range(60):  # kubectl wait errors while a fresh CRD has no conditions yet
            if done.returncode == 0 or "conditions accessor error" not in done.stderr:
                break
            time.sleep(0.5)
            done = k(*args)
        assert done.returncode == 0, done.stderr
    try:
        yield k
    finally:
        k("delete", "namespace", k.namespace, "--wait=false")


def validate_refuses(path: Path) -> tuple[bool, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", str(path)])
    return code != 0, (err.getvalue() or out.getvalue()).strip()


def _documents(path: Path) -> int:
    try:
        return sum(1 for d in yaml.safe_load_all(path.read_text()) if d is not None)
    except yaml.YAMLError:
        return 1


def server_refuses(kubectl: Kubectl, files: list[CorpusFile]) -> dict[Path, tuple[bool, str]]:
    """Per file: refused by ``kubectl apply --dry-run=server``, and kubectl's words."""
    args = [a for f in files for a in ("-f", str(f.path))]
    result = kubectl("apply", "--dry-run=server", *args)
    errors = result.stderr.splitlines()
    outcome: dict[Path, tuple[bool, str]] = {}
    for f in files:
        said = [line for line in errors if f'"{f.path}"' in line or f" {f.path}:" in line]
        if said:
            outcome[f.path] = (True, " ".join(said))
    created = result.stdout.count("created (server dry run)")
    unnamed = [f for f in files if f.path not in outcome]
    if created != sum(_documents(f.path) for f in unnamed):
        # Some error named no file: settle each unnamed file on its own.
        for f in unnamed:
            alone = kubectl("apply", "--dry-run=server", "-f", str(f.path))
            outcome[f.path] = (alone.returncode != 0, alone.stderr.strip())
    for f in unnamed:
        outcome.setdefault(f.path, (False, "created (server dry run)"))
    return outcome


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 110 else text[:107] + "..."


def test_validate_and_the_api_server_agree_on_every_corpus_file(kubectl: Kubectl) -> None:
    files = invalid_files() + valid_files()
    server = {
        **server_refuses(kubectl, [f for f in files if f.path.parent == INVALID_DIR]),
        **server_refuses(kubectl, [f for f in files if f.path.parent == VALID_DIR]),
    }

    rows = []
    for f in files:
        ours, our_words = validate_refuses(f.path)
        theirs, their_words = server[f.path]
        expected = (f.invalid, f.invalid and f.validate_only is None)
        if (ours, theirs) != expected:
            rows.append((f, ours, theirs, our_words, their_words))

    table = "\n".join(
        f"{f.path.parent.name}/{f.path.name}: validate {'refuses' if ours else 'accepts'}, "
        f"API server {'refuses' if theirs else 'accepts'}"
        + (f" (marked validate-only: {f.validate_only})" if f.validate_only else "")
        + f"\n    rule: {f.rule}\n    validate: {_short(our)}\n    kubectl:  {_short(their)}"
        for f, ours, theirs, our, their in rows
    )
    assert not rows, f"{len(rows)} disagreement(s) in {len(files)} files:\n{table}"
