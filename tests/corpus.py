"""The parity corpus of job files (tests/data/invalid-jobs, tests/data/valid-jobs).

Each invalid file breaks one rule and says so in its header comments:

- ``# rule: <group>: <the rule>`` (required),
- ``# field: <path>``: the field ``fedkube validate`` must name (required),
- ``# parity: validate-only, <why>``: the API server cannot check this rule (it cannot import
  Python, or its YAML reader keeps the last of two duplicate keys); the parity test then
  checks that claim, that ``kubectl apply`` does accept the file.

Valid files carry ``# rule:`` only, saying which edge case they hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
INVALID_DIR = DATA / "invalid-jobs"
VALID_DIR = DATA / "valid-jobs"
_HEADER = re.compile(r"^# (rule|field|parity): (.*)$")


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    rule: str
    field: str | None
    validate_only: str | None
    """Why the API server cannot refuse this file, when it cannot."""

    @property
    def invalid(self) -> bool:
        return self.path.parent == INVALID_DIR


def read(path: Path) -> CorpusFile:
    headers: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if match := _HEADER.match(line):
            headers[match[1]] = match[2]
    parity = headers.get("parity")
    only = parity.removeprefix("validate-only, ") if parity else None
    if "rule" not in headers or (parity is not None and only == parity):
        raise ValueError(f"{path}: needs '# rule: ...' (and '# parity: validate-only, <why>')")
    return CorpusFile(path, headers["rule"], headers.get("field"), only)


def invalid_files() -> list[CorpusFile]:
    return [read(p) for p in sorted(INVALID_DIR.glob("*.yaml"))]


def valid_files() -> list[CorpusFile]:
    return [read(p) for p in sorted(VALID_DIR.glob("*.yaml"))]
