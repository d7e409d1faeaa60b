"""Key rules shared by every store: what a valid key is, and that a bad one is explained."""

from __future__ import annotations

import pytest

from fedcore.errors import StoreError
from fedcore.store.base import normalize_prefix, validate_key, validate_list_prefix

GOOD_KEYS = [
    "job.json",
    "rounds/000001/updates/hospital-a.safetensors",
    "final/model.safetensors",
    "a/.hidden",
    "a/b..c",
    "ünïcode/€ and spaces.json",
]

BAD_KEYS = [
    ("", "is empty"),
    ("/job.json", "starts with '/'"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("..", "'..' segment"),
    ("a/../../b", "'..' segment"),
    ("./a", "'.' segment"),
    ("a\\b", "contains '\\\\\\\\'"),
    ("a\x00b", "contains"),
    ("a\tb", "contains"),
    (".fedkube-tmp-1234", "reserves"),
    ("rounds/.fedkube-sha256.round.json", "reserves"),
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_a_valid_key_is_returned_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS, ids=[repr(k) for k, _ in BAD_KEYS])
def test_an_invalid_key_is_refused_with_the_reason_and_the_key(key: str, reason: str) -> None:
    with pytest.raises(StoreError, match=reason) as info:
        validate_key(key)

    assert repr(key) in str(info.value)


def test_a_key_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(StoreError, match="must be a str, got int"):
        validate_key(7)  # type: ignore[arg-type]


def test_the_leading_slash_error_suggests_the_relative_key() -> None:
    with pytest.raises(StoreError, match="write 'rounds/x'"):
        validate_key("/rounds/x")


@pytest.mark.parametrize("prefix", ["", "rounds/", "rounds/000001/updates/a", "rounds"])
def test_list_prefixes_may_be_empty_partial_or_end_in_a_slash(prefix: str) -> None:
    assert validate_list_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "../", "a//", "/rounds/"])
def test_list_prefixes_follow_the_key_rules(prefix: str) -> None:
    with pytest.raises(StoreError):
        validate_list_prefix(prefix)


@pytest.mark.parametrize(
    ("given", "stored"),
    [("", ""), ("/", ""), ("fedkube/ns/job", "fedkube/ns/job/"), ("/a/b/", "a/b/")],
)
def test_store_prefixes_are_stored_with_one_trailing_slash(given: str, stored: str) -> None:
    assert normalize_prefix(given) == stored


def test_a_store_prefix_that_escapes_is_refused() -> None:
    with pytest.raises(StoreError, match=r"store prefix 'a/\.\./b' is not a valid key path"):
        normalize_prefix("a/../b")
