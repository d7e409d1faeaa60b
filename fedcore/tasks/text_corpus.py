"""Real text that needs no download: the docstrings of Python's standard library, as bytes.

Why it exists: the LoRA task (``fedcore.tasks.causal_lm``) fine-tunes a language model, and a
federated run must work offline, on every participant, with data that differ between
participants the way real silos differ. Every Python installation ships the same prose: the
docstrings of its standard-library modules. They are grouped into module families (text
processing, data structures, files, networking, concurrency, numbers), and with
``partition: family`` each client gets whole families (non-IID: one client reads about
sockets, another about decimals); ``partition: iid`` deals documents round-robin instead.

Tokens are bytes (``0..255``) plus three specials (``PAD``, ``BOS``, ``EOS``): a tokenizer
that needs no vocabulary file. A document is ``qualified name + newline + docstring``, encoded
as UTF-8; each partition's documents are joined with ``EOS`` between them and cut into
windows of ``context + 1`` tokens (input: the first ``context``, target: the last
``context``). A tenth of the documents (chosen by a hash of their name, so the same on every
machine) is held out for evaluation and never given to a client.

Determinism: documents are read in a fixed order (family, module, name) and a participant's
samples depend only on the seed, its index and the client count. Different Python versions
have different docstrings, so every participant of a job must run the same runtime image
(fedkube's images pin it); memory grows with the corpus, a few MB.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import TensorDataset

from fedcore.errors import TaskError

BYTE_TOKENS = 256
PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259
"""256 byte tokens and the three specials."""

FAMILIES: dict[str, tuple[str, ...]] = {
    "text": ("string", "textwrap", "difflib", "re", "html.parser", "json", "csv", "gettext"),
    "data": ("collections", "heapq", "bisect", "enum", "dataclasses", "functools", "copy"),
    "files": ("pathlib", "shutil", "glob", "fnmatch", "tempfile", "zipfile", "tarfile", "io"),
    "network": ("socket", "http.client", "urllib.request", "urllib.parse", "email.message"),
    "concurrency": ("threading", "subprocess", "queue", "concurrent.futures", "sched"),
    "numbers": ("statistics", "decimal", "fractions", "random", "datetime", "calendar"),
}
"""Module families, in a fixed order: the unit of the non-IID partition."""
HELD_OUT_PER_MILLE = 100
"""Documents held out for evaluation: a tenth, chosen by a hash of their name."""

Partition = Literal["family", "iid"]


@dataclass(frozen=True)
class Document:
    family: str
    name: str
    """``module.Qualified.name``: unique, and what the held-out choice hashes."""
    text: bytes

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(self.name.encode()).digest()
        return int.from_bytes(digest[:4], "big") % 1000 < HELD_OUT_PER_MILLE


def documents() -> list[Document]:
    """Every docstring of ``FAMILIES``' modules, in (family, module, name) order."""
    docs: list[Document] = []
    for family, modules in FAMILIES.items():
        for module_name in modules:
            docs += _module_documents(family, module_name)
    return docs


def _module_documents(family: str, module_name: str) -> Iterator[Document]:
    module = importlib.import_module(module_name)
    seen: set[str] = set()
    for name, obj in _members(module_name, module):
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
        if not doc or not doc.strip() or name in seen:
            continue
        seen.add(name)
        text = f"{name}\n{inspect.cleandoc(doc)}"
        yield Document(family, name, text.encode("utf-8"))


def _members(module_name: str, module: object) -> Iterator[tuple[str, object]]:
    """The module, then its own classes and functions (and their methods), sorted by name."""
    yield module_name, module
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isclass(obj):
            yield f"{module_name}.{attr}", obj
            for method, member in sorted(vars(obj).items()):
                if not method.startswith("_") and inspect.isfunction(member):
                    yield f"{module_name}.{attr}.{method}", member
        elif inspect.isfunction(obj):
            yield f"{module_name}.{attr}", obj


def partition_of(
    docs: Sequence[Document], client_index: int, num_clients: int, how: Partition
) -> list[Document]:
    """The training documents of client ``client_index`` of ``num_clients``.

    ``family``: family ``f`` (in ``FAMILIES``' order) belongs to client ``f % num_clients``;
    with more clients than families, the clients ``k`` with ``k % families == f`` share
    family ``f``'s documents round-robin. ``iid``: document ``j`` goes to client
    ``j % num_clients``.
    """
    train = [d for d in docs if not d.held_out]
    if how == "iid":
        return train[client_index::num_clients]
    families = list(FAMILIES)
    mine: list[Document] = []
    for f, family in enumerate(families):
        if num_clients > len(families):
            sharers = [k for k in range(num_clients) if k % len(families) == f]
        else:
            sharers = [f % num_clients]
        if client_index not in sharers:
            continue
        members = [d for d in train if d.family == family]
        mine += members[sharers.index(client_index) :: len(sharers)]
    return mine


def held_out(docs: Sequence[Document]) -> list[Document]:
    return [d for d in docs if d.held_out]


def windows(docs: Sequence[Document], context: int) -> torch.Tensor:
    """``[n, context + 1]`` int64 token windows of the documents joined with ``EOS``."""
    stream = bytearray()
    for doc in docs:
        stream += doc.text
        stream.append(0)  # a placeholder for EOS, which is not a byte
    tokens = (
        torch.frombuffer(stream, dtype=torch.uint8).to(torch.int64)
        if stream
        else torch.zeros(0, dtype=torch.int64)
    )
    ends = torch.cumsum(torch.tensor([len(d.text) + 1 for d in docs], dtype=torch.int64), 0)
    if len(ends):
        tokens[ends - 1] = EOS
    n = tokens.numel() // (context + 1)
    return tokens[: n * (context + 1)].view(n, context + 1)


def lm_dataset(
    docs: Sequence[Document], *, context: int, limit: int, seed: int, what: str
) -> TensorDataset:
    """Up to ``limit`` windows of ``docs`` (a seeded choice when there are more), as
    ``(input, target)`` pairs shifted by one token."""
    rows = windows(docs, context)
    if rows.shape[0] == 0:
        raise TaskError(
            f"{what}: the documents make no window of {context + 1} tokens; lower "
            "task.config.context or use fewer clients"
        )
    if rows.shape[0] > limit:
        generator = torch.Generator().manual_seed(seed % (2**63))
        pick = torch.randperm(rows.shape[0], generator=generator)[:limit]
        rows = rows[pick.sort().values]
    return TensorDataset(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())


def encode(text: str) -> torch.Tensor:
    """Tokens of ``text``: its UTF-8 bytes after ``BOS``."""
    return torch.tensor([BOS, *text.encode("utf-8")], dtype=torch.int64)


def decode(tokens: Sequence[int]) -> str:
    """Text of byte tokens; specials are dropped, invalid UTF-8 is replaced."""
    return bytes(t for t in tokens if 0 <= t < BYTE_TOKENS).decode("utf-8", errors="replace")


__all__ = [
    "BOS",
    "EOS",
    "FAMILIES",
    "PAD",
    "VOCAB_SIZE",
    "Document",
    "Partition",
    "decode",
    "documents",
    "encode",
    "held_out",
    "lm_dataset",
    "partition_of",
    "windows",
]
