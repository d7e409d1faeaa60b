"""Gaussian noise for ``dpfedavg`` that is reproducible by the aggregator and nobody else.

Two demands pull apart. A restarted aggregator must compute a round to the same bytes (the
round protocol's promise), so the noise must come from a seeded generator. But every
participant reads ``job.json`` and every global model: whoever knows the seed can draw the
same noise, subtract it from ``w_{t+1} - w_t`` and read the exact clipped sum, and the
privacy guarantee is gone. So the seed must be a secret only the aggregator holds, and the
generator must not give its state away from its output either.

* **The secret.** ``NoiseKey`` is 32 bytes derived (HMAC-SHA256) from the job's commit
  signing private key (``fedcore.commit_signing.CommitSigner.derive_secret``), which is
  mounted only into the aggregator pod (``fedkube run``: its state directory, mode 0600).
  Nothing public (``spec.seed``, the job's name) seeds it, and it never appears in a log
  line, a record or a repr. A key rotated or lost means a resumed round draws other noise
  (a different but equally private model); it does not weaken anything.
* **Per round, per input set.** The round's key is ``HMAC(secret, round, folded updates)``,
  where the folded updates are their ``(client, update sha256)`` pairs. The same updates give
  the same bytes (bit-identical resume); different ones give independent noise, so two
  models computed for one round from different inputs (a crash after the global model was
  uploaded and before its record, then a rerun that folded another set) never share noise
  that would cancel in their difference. Each float tensor gets its own stream, keyed by its
  name, so the noise does not depend on the order tensors are visited.
* **The generator.** ChaCha20 (the ``cryptography`` package, already a dependency for the
  signatures) keyed by the tensor's key: a cryptographic stream, so no output reveals the
  state (unlike the Mersenne Twister behind ``torch.Generator``, whose state can be
  reconstructed from its outputs, and whose seed is 64 bits). Each 64-bit word gives a
  uniform in (0, 1) from its top 53 bits, pairs of uniforms give two normals by Box-Muller,
  in float64.

Streaming: ``fill_normal_`` draws one slice at a time (``SLICE_ELEMENTS``, 2 MiB of keystream
and a few float64 temporaries of the slice's size), so noising a tensor in place costs
O(slice) memory beyond the tensor, and time linear in the model (``make bench-dp``; numbers
in ``docs/privacy.md``). The disk accumulator calls it on consecutive slices of a tensor with
one stream: the stream is read in order and those slices are whole multiples of
``SLICE_ELEMENTS``, so it draws and adds exactly what one call on the whole tensor does.

Limits, said plainly: the normals come from floating-point arithmetic, not an exact discrete
Gaussian; Mironov's (2012) attack reads the low-order bits of floating-point noise. Here the
noised float64 value is rounded to the model's dtype (float32: 29 fewer bits) before it is
released, which hides those bits, but this is not a formally "secure noise" implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Iterable
from typing import Any

import numpy
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32
SLICE_ELEMENTS = 1 << 18
"""Normals drawn per slice: 2 MiB of keystream, a few float64 temporaries of 2 MiB."""
_DOMAIN = b"fedkube dpfedavg noise v1\n"
_MANTISSA = 1 << 53


class NoiseKey:
    """32 secret bytes that seed the noise; never shown in a repr or a log line."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a noise key is {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = bytes(secret)

    @classmethod
    def random(cls) -> NoiseKey:
        """A fresh key from the OS: private, but a rerun draws other noise."""
        return cls(os.urandom(KEY_BYTES))

    def child(self, *parts: str | bytes) -> NoiseKey:
        """A key derived from this one and ``parts`` (a round, a tensor name ...)."""
        message = bytearray(_DOMAIN)
        for part in parts:
            raw = part.encode() if isinstance(part, str) else part
            message += len(raw).to_bytes(8, "big") + raw  # length-prefixed: no ambiguity
        return NoiseKey(hmac.new(self._secret, bytes(message), hashlib.sha256).digest())

    def for_round(self, round_: int, folded: Iterable[tuple[str, str]]) -> NoiseKey:
        """The key of round ``round_`` computed from these ``(client, update sha256)`` pairs."""
        pairs = "".join(f"{client}\0{sha}\n" for client, sha in sorted(folded))
        return self.child("round", str(round_), hashlib.sha256(pairs.encode()).digest())

    def stream(self, name: str) -> NormalStream:
        """The normals of tensor (or quantity) ``name`` under this key."""
        return NormalStream(self.child("tensor", name)._secret)

    def count_stream(self) -> NormalStream:
        """The normals of adaptive clipping's count (a stream no tensor name can reach)."""
        return NormalStream(self.child("count")._secret)

    def __repr__(self) -> str:
        return "NoiseKey(<secret>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a NoiseKey cannot be pickled (it would copy the secret)")


class NormalStream:
    """Standard normals from a ChaCha20 keystream, read in order, slice by slice."""

    def __init__(self, key: bytes) -> None:
        # ChaCha20 with a zero counter and nonce: each key is used for exactly one stream.
        cipher = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None)
        self._keystream = cipher.encryptor()
        self._spare: torch.Tensor | None = None
        """A normal drawn but not yet handed out (Box-Muller makes them in pairs)."""

    def _uniforms(self, count: int) -> torch.Tensor:
        """``count`` float64 uniforms in (0, 1), never 0 (its log is taken)."""
        raw = self._keystream.update(bytes(8 * count))
        # Little-endian words on every machine ('<u8'); their top 53 bits, centred in (0, 1).
        top = numpy.frombuffer(raw, dtype="<u8") >> numpy.uint64(11)
        uniform = top.astype(numpy.float64)
        uniform += 0.5
        uniform *= 1.0 / _MANTISSA
        return torch.from_numpy(uniform)

    def normals(self, count: int) -> torch.Tensor:
        """The next ``count`` standard normals, float64."""
        out = torch.empty(count, dtype=torch.float64)
        start = 0
        if count and self._spare is not None:
            out[0] = self._spare
            self._spare = None
            start = 1
        pairs = (count - start + 1) // 2
        if pairs:
            u = self._uniforms(2 * pairs).view(pairs, 2)
            radius = u[:, 0].log_().mul_(-2.0).sqrt_()
            angle = u[:, 1].mul_(2.0 * math.pi)
            both = torch.stack((radius * angle.cos(), radius * angle.sin()), dim=1).view(-1)
            need = count - start
            out[start:] = both[:need]
            if both.numel() > need:
                self._spare = both[need:].clone()
        return out

    def fill_normal_(self, target: torch.Tensor, std: float) -> None:
        """Add ``std`` times the next normals to float64 ``target``, in place, slice by slice
        (``target``'s elements in row-major order)."""
        if target.dtype != torch.float64:
            raise ValueError(f"noise is added to float64 tensors, got {target.dtype}")
        flat = target.view(-1)
        for start in range(0, flat.numel(), SLICE_ELEMENTS):
            piece = flat[start : start + SLICE_ELEMENTS]
            piece.add_(self.normals(piece.numel()), alpha=std)


__all__ = ["KEY_BYTES", "SLICE_ELEMENTS", "NoiseKey", "NormalStream"]
