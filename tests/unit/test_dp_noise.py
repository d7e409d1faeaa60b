"""dpfedavg's noise: reproducible from its secret key, independent across keys, rounds and
tensors, standard normal, and never shown."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcore.commit_signing import CommitSigner
from fedcore.strategies.dp_noise import SLICE_ELEMENTS, NoiseKey

KEY = NoiseKey(bytes(range(32)))


def test_the_same_key_draws_the_same_normals() -> None:
    assert torch.equal(
        KEY.stream("w").normals(1000), NoiseKey(bytes(range(32))).stream("w").normals(1000)
    )


def test_keys_rounds_folded_sets_and_tensors_draw_independent_noise() -> None:
    pairs = [("a", "aa" * 32), ("b", "bb" * 32)]
    draws = [
        KEY.for_round(1, pairs).stream("w").normals(64),
        KEY.for_round(2, pairs).stream("w").normals(64),
        KEY.for_round(1, pairs[:1]).stream("w").normals(64),
        KEY.for_round(1, pairs).stream("b").normals(64),
        KEY.for_round(1, pairs).count_stream().normals(64),
        NoiseKey(bytes(32)).for_round(1, pairs).stream("w").normals(64),
    ]

    for i, x in enumerate(draws):
        for y in draws[i + 1 :]:
            assert abs(float(torch.corrcoef(torch.stack((x, y)))[0, 1])) < 0.5
            assert not torch.equal(x, y)


def test_a_rounds_key_does_not_depend_on_the_order_updates_arrived_in() -> None:
    pairs = [("a", "aa" * 32), ("b", "bb" * 32)]

    one = KEY.for_round(3, pairs).stream("w").normals(16)
    other = KEY.for_round(3, list(reversed(pairs))).stream("w").normals(16)

    assert torch.equal(one, other)


def test_normals_read_in_pieces_are_the_stream_read_at_once() -> None:
    whole = KEY.stream("w").normals(11)
    stream = KEY.stream("w")

    pieces = torch.cat([stream.normals(3), stream.normals(1), stream.normals(0), stream.normals(7)])

    assert torch.equal(pieces, whole)


def test_fill_adds_std_times_the_stream_across_slices() -> None:
    n = SLICE_ELEMENTS + 5  # two slices, an odd remainder
    target = torch.full((n,), 2.0, dtype=torch.float64)

    KEY.stream("w").fill_normal_(target.view(-1, 1), 3.0)

    expected = torch.full((n,), 2.0, dtype=torch.float64).add_(
        KEY.stream("w").normals(n), alpha=3.0
    )
    assert torch.equal(target, expected)


def test_noise_is_standard_normal() -> None:
    z = KEY.stream("w").normals(400_000)
    n = z.numel()

    # Fixed key, so the draw is fixed: the bounds are ~5 standard errors wide, not a coin flip.
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)
    for k, share in ((1.0, 0.682689), (2.0, 0.954500), (3.0, 0.997300)):
        inside = float((z.abs() < k).double().mean())
        assert abs(inside - share) < 5 * math.sqrt(share * (1 - share) / n), k
    assert float(z.abs().max()) < 6.5


def test_fill_refuses_a_tensor_that_is_not_float64() -> None:
    with pytest.raises(ValueError, match="float64"):
        KEY.stream("w").fill_normal_(torch.zeros(3), 1.0)


def test_the_key_never_shows_and_cannot_be_pickled() -> None:
    secret = bytes(range(32))
    key = NoiseKey(secret)

    assert secret.hex() not in repr(key) + str(key)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(key)
    with pytest.raises(ValueError, match="32 bytes"):
        NoiseKey(b"short")


def test_the_secret_comes_from_the_commit_key_and_differs_per_purpose_and_job() -> None:
    raw = Ed25519PrivateKey.generate()
    signer = CommitSigner(raw)
    other_job = CommitSigner(Ed25519PrivateKey.generate())

    secret = signer.derive_secret("dpfedavg noise")

    assert secret == CommitSigner(raw).derive_secret("dpfedavg noise")
    assert len(secret) == 32
    assert secret != signer.derive_secret("something else")
    assert secret != other_job.derive_secret("dpfedavg noise")
