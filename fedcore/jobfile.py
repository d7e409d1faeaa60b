"""Job files: YAML (or JSON) read the way a careful reader would, every problem placed.

A job file is what a user edits, so every problem is reported in the file's own terms: the
file's name, the document (a file may hold several, ``---``-separated, as ``kubectl apply``
takes them) and the line. Beyond what a YAML parser checks:

- a key given twice in one mapping is an error naming both lines (YAML parsers, and
  ``kubectl``'s, silently keep the last one, so half of such a file is ignored unseen);
- every document is checked, not just the first one.

``check_job_file`` is ``fedkube validate``'s view: the file is a manifest for the API server,
so each document needs ``apiVersion``, ``kind: FederatedJob`` and ``metadata.name``.
``load_job_file`` is ``fedkube run``'s and the pods': a file may leave out ``apiVersion``,
``kind`` and ``metadata`` (the job is named after the file), documents of other kinds are
passed over, and the first FederatedJob is the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedcore import spec as fs
from fedcore.errors import SpecError
from fedcore.spec_messages import kind_of as _kind_of
from fedcore.taskcheck import check_entrypoint

KeyPath = tuple[int | str, ...]


@dataclass
class Document:
    """One YAML document of a file: its data and the line of every key and list item."""

    index: int
    """0-based position in the file (what ``document N`` in messages counts)."""
    data: Any
    line: int
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor found in the file."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return self.line


@dataclass
class _Report:
    """Problems of a whole file, each with its place."""

    source: str
    multi: bool = False
    problems: list[tuple[str, str]] = field(default_factory=list)
    places: list[str] = field(default_factory=list)

    def add(self, doc: Document | None, field_: str, message: str, line: int | None) -> None:
        parts = [f"document {doc.index}"] if doc is not None and self.multi else []
        if line is not None:
            parts.append(f"line {line}")
        self.problems.append((field_, message))
        self.places.append(", ".join(parts))

    def add_error(self, doc: Document, error: SpecError) -> None:
        for field_, message in error.problems:
            self.add(doc, field_, message, doc.line_of(field_parts(field_)))

    def raise_if_any(self) -> None:
        if self.problems:
            raise SpecError(self.problems, source=self.source, places=self.places)


_PART = re.compile(r"\[(\d+)\]|\['([^']*)'\]|\.?([^.\[]+)")


def field_parts(field_: str) -> KeyPath:
    """``spec.clients[1].resources.limits['nvidia.com/gpu']`` as a path of keys and indices."""
    parts: list[int | str] = []
    for index, quoted, name in _PART.findall(field_):
        if index:
            parts.append(int(index))
        else:
            parts.append(quoted or name)
    return tuple(parts)


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{node.tag}>"


_Duplicate = tuple[Document, str, str, int]


def _walk(
    node: yaml.Node, path: KeyPath, doc: Document, found: list[_Duplicate], seen: set[int]
) -> None:
    """Record the line of every key and item under ``node``; report duplicate keys.

    A node reached again through an alias is not walked again: nested aliases would make the
    walk exponential (a "billion laughs" file).
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = _key_text(key)
            line = key.start_mark.line + 1
            if name == "<<":  # a merge key: its entries may be overridden on purpose
                continue
            if name in first:
                message = (
                    f"duplicate key {name!r} (lines {first[name]} and {line}): YAML keeps only "
                    "the last one and silently drops the other; keep one"
                )
                found.append((doc, _shown_path((*path, name)), message, line))
            first.setdefault(name, line)
            doc.lines.setdefault((*path, name), line)
            _walk(value, (*path, name), doc, found, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            doc.lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), doc, found, seen)


def _shown_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<document>"


def _yaml_problem(error: yaml.YAMLError) -> tuple[str, int | None]:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    text = f"{context}: {problem}" if context else str(problem)
    if mark is None:
        return f"not valid YAML: {text}", None
    return f"not valid YAML: {text} (column {mark.column + 1})", mark.line + 1


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, plus floats without a dot (``1e3``), which the API
    server's YAML reader takes as numbers too."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_documents(path: str | Path) -> list[Document]:
    """The file's non-empty documents; ``SpecError`` for unreadable files, YAML syntax
    errors and duplicate keys, each naming the file and the line."""
    path = Path(path)
    report = _Report(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        detail = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        report.add(None, "<file>", f"cannot read {path}: {detail}", None)
        report.raise_if_any()
    documents: list[Document] = []
    duplicates: list[_Duplicate] = []
    loader = _Loader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # the end of the stream
                break
            doc = Document(index=index, data=None, line=node.start_mark.line + 1)
            index += 1
            _walk(node, (), doc, duplicates, set())
            doc.data = loader.construct_document(node)
            if doc.data is not None:
                documents.append(doc)
    except yaml.YAMLError as e:
        message, line = _yaml_problem(e)
        report.add(None, "<file>", message, line)
    finally:
        loader.dispose()
    report.multi = len(documents) > 1
    for doc, field_, message, line in duplicates:
        report.add(doc, field_, message, line)
    report.raise_if_any()
    return documents


def _check(doc: Document, obj: dict[str, Any], report: _Report) -> fs.FederatedJob | None:
    try:
        return fs.parse_job(obj)
    except SpecError as e:
        report.add_error(doc, e)
        return None


@dataclass(frozen=True)
class CheckedJob:
    """One valid FederatedJob document of a file."""

    job: fs.FederatedJob
    document: int
    task_note: str
    """What the entrypoint check found (``loads``, or why it could not load the task here)."""


def check_job_file(path: str | Path) -> list[CheckedJob]:
    """Every document of a manifest file, checked as the API server would, and each task's
    entrypoint loaded without running it (``fedcore.taskcheck``): ``SpecError`` naming every
    problem of every document, with its document and line."""
    documents = read_documents(path)
    report = _Report(str(path), multi=len(documents) > 1)
    if not documents:
        report.add(None, "<file>", f"no {fs.KIND} document in the file", None)
    jobs: list[CheckedJob] = []
    for doc in documents:
        if not isinstance(doc.data, dict):
            report.add(
                doc, "<document>", f"expected a mapping (a {fs.KIND} object), got {_kind(doc)}",
                doc.line,
            )  # fmt: skip
            continue
        missing = _manifest_problems(doc.data)
        for field_, message in missing:
            report.add(doc, field_, message, doc.line_of(field_parts(field_)))
        if missing:
            continue
        if (job := _check(doc, doc.data, report)) is None:
            continue
        try:
            note = check_entrypoint(job.spec.task.entrypoint)
        except SpecError as e:
            report.add_error(doc, e)
            continue
        jobs.append(CheckedJob(job, doc.index, note))
    report.raise_if_any()
    return jobs


def _kind(doc: Document) -> str:
    return _kind_of(doc.data)


def _manifest_problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """What the API server needs before it looks at the spec: apiVersion, kind, a name."""
    problems: list[tuple[str, str]] = []
    for key, value in (("apiVersion", f"{fs.API_GROUP}/{fs.API_VERSION}"), ("kind", fs.KIND)):
        if key not in obj:
            problems.append((key, f"required field is missing; add {key}: {value}"))
    if "kind" in obj and obj["kind"] != fs.KIND:
        problems.append(
            (
                "kind",
                f"{fs.KIND} is the only kind fedkube validates (got {obj['kind']!r}); "
                "keep other objects in their own file",
            )
        )
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or "name" not in metadata:
        problems.append(("metadata.name", "required field is missing; name the job"))
    if not isinstance(metadata, dict):
        return problems
    for key in metadata:
        if key not in OBJECT_META_FIELDS:
            problems.append(
                (f"metadata.{key}", "unknown field; metadata holds name, namespace, labels, "
                 "annotations and the fields the API server sets")
            )  # fmt: skip
    for key in ("labels", "annotations"):
        given = metadata.get(key)
        if given is not None and not isinstance(given, dict):
            problems.append((f"metadata.{key}", f"must be a mapping (got {_kind_of(given)})"))
        for name, value in (given or {}).items() if isinstance(given, dict) else ():
            if not isinstance(value, str):
                message = f"must be a string (got {_kind_of(value)}); quote it"
                problems.append((f"metadata.{key}.{name}", message))
    return problems


OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion",
        "generation", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
        "labels", "annotations", "ownerReferences", "finalizers", "managedFields",
    }
)  # fmt: skip
"""Kubernetes' ObjectMeta: the API server refuses other keys under ``metadata``."""


def load_job_file(path: str | Path) -> fs.FederatedJob:
    """The job of a file for ``fedkube run`` and the pods: every FederatedJob document is
    checked, the first one is returned."""
    documents = read_documents(path)
    report = _Report(str(path), multi=len(documents) > 1)
    jobs: list[fs.FederatedJob] = []
    candidates = [
        d for d in documents if isinstance(d.data, dict) and d.data.get("kind", fs.KIND) == fs.KIND
    ]
    if not candidates:
        report.add(None, "kind", f"no {fs.KIND} document in the file", None)
    for doc in candidates:
        obj = doc.data
        if "metadata" not in obj:
            obj = {**obj, "metadata": {"name": _name_from_path(Path(path))}}
        if (job := _check(doc, obj, report)) is not None:
            jobs.append(job)
    report.raise_if_any()
    return jobs[0]


def _name_from_path(path: Path) -> str:
    """A job name from a file name: a DNS-1035 label (``01 My Job.yaml`` gives ``my-job``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower())
    name = re.sub(r"^[^a-z]+", "", name)
    return name[: fs.MAX_JOB_NAME].strip("-") or "job"
