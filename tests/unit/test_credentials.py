"""Roles, their session policies and the credentials.json format (fedcore.credentials)."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedcore.credentials import (
    Role,
    ScopedCredentials,
    dump_credentials,
    glob_matches,
    keeps_variate,
    load_credentials,
    may_read,
    policy_json,
    read_credentials_file,
    session_policy,
    writable_keys,
    write_credentials_file,
)
from fedcore.errors import CredentialsError
from fedcore.spec import MAX_CLIENT_NAME, MAX_JOB_NAME

PREFIX = "fedkube/team/digits-1a2b3c4d/"
OBJ = "arn:aws:s3:::fedkube/fedkube/team/digits-1a2b3c4d/"
EXPIRES = datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC)


def make_credentials(**overrides: object) -> ScopedCredentials:
    fields: dict[str, object] = {
        "access_key_id": "ASIAEXAMPLE",
        "secret_access_key": "s3cr3t-value",
        "session_token": "token-value",
        "expiration": EXPIRES,
    }
    fields.update(overrides)
    return ScopedCredentials(**fields)  # type: ignore[arg-type]


# ---- policies ------------------------------------------------------------------------------


def test_client_policy_reads_public_keys_and_reads_and_writes_only_its_own_slot() -> None:
    policy = session_policy("fedkube", PREFIX, Role.for_client("hospital-a"))

    assert policy == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadJobKeys",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [
                    f"{OBJ}job.json",
                    f"{OBJ}rounds/??????/global.safetensors",
                    f"{OBJ}rounds/??????/round.json",
                    f"{OBJ}rounds/??????/strategy.safetensors",
                    f"{OBJ}final/*",
                ],
            },
            {
                "Sid": "OwnUpdate",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": [
                    f"{OBJ}rounds/??????/updates/hospital-a.json",
                    f"{OBJ}rounds/??????/updates/hospital-a.*safetensors",
                ],
            },
        ],
    }


def test_a_client_writes_its_own_update_shards_and_no_other_clients() -> None:
    mine, theirs = Role.for_client("hospital-a"), Role.for_client("hospital-b")
    key = "rounds/000002/updates/hospital-a.shard-00003-of-00004.safetensors"

    assert any(glob_matches(p, key) for p in writable_keys(mine))
    assert not any(glob_matches(p, key) for p in writable_keys(theirs))
    assert not any(
        glob_matches(p, "rounds/000002/updates/hospital-ab.safetensors")
        for p in writable_keys(mine)
    )


def test_in_a_scaffold_job_a_client_reads_and_writes_its_own_variate_and_no_other() -> None:
    mine, theirs = Role.for_client("hospital-a"), Role.for_client("hospital-b")
    key = "clients/hospital-a/scaffold.safetensors"
    variate = keeps_variate("scaffold")

    assert may_read(mine, key, variate=variate)
    assert not may_read(theirs, key, variate=variate)
    assert not may_read(mine, "clients/hospital-b/scaffold.safetensors", variate=variate)
    assert key in writable_keys(mine, variate=variate)
    assert not any(glob_matches(p, key) for p in writable_keys(theirs, variate=variate))
    assert not any(glob_matches(p, key) for p in writable_keys(Role.aggregator()))
    own = session_policy("fedkube", PREFIX, mine, variate=variate)["Statement"][1]
    assert own["Sid"] == "OwnUpdate"
    assert own["Resource"][-1] == f"{OBJ}{key}"


def test_other_strategies_give_clients_no_variate_slot() -> None:
    mine = Role.for_client("hospital-a")
    key = "clients/hospital-a/scaffold.safetensors"

    assert not keeps_variate("fedavg")
    assert not may_read(mine, key)
    assert key not in policy_json(session_policy("fedkube", PREFIX, mine))


def test_aggregator_policy_lists_and_reads_the_job_and_writes_rounds_and_final() -> None:
    policy = session_policy("fedkube", PREFIX, Role.aggregator())

    assert policy == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListJobKeys",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": ["arn:aws:s3:::fedkube"],
                "Condition": {"StringLike": {"s3:prefix": [f"{PREFIX}*"]}},
            },
            {
                "Sid": "ReadJobKeys",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{OBJ}*"],
            },
            {
                "Sid": "WriteRounds",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": [
                    f"{OBJ}job.json",
                    f"{OBJ}rounds/??????/global.safetensors",
                    f"{OBJ}rounds/??????/round.json",
                    f"{OBJ}rounds/??????/strategy.safetensors",
                    f"{OBJ}final/*",
                ],
            },
        ],
    }


def test_no_policy_allows_deleting() -> None:
    for role in (Role.aggregator(), Role.for_client("a")):
        text = policy_json(session_policy("fedkube", PREFIX, role))

        assert "Delete" not in text
        assert '"s3:*"' not in text


def test_a_prefix_without_trailing_slash_is_completed() -> None:
    policy = session_policy("fedkube", PREFIX.rstrip("/"), Role.for_client("a"))

    assert policy["Statement"][0]["Resource"][0] == f"{OBJ}job.json"


@pytest.mark.parametrize(
    ("bucket", "prefix", "field"),
    [
        ("fedkube", "jobs/*/", "spec.storage.prefix"),
        ("fedkube", "jobs/a?/", "spec.storage.prefix"),
        ("fedkube", "jobs/${aws:username}/", "spec.storage.prefix"),
        ("fed*", "jobs/a/", "spec.storage.bucket"),
    ],
)
def test_wildcards_in_bucket_or_prefix_are_refused_naming_the_field(
    bucket: str, prefix: str, field: str
) -> None:
    with pytest.raises(CredentialsError, match=rf"{field}.*wildcard"):
        session_policy(bucket, prefix, Role.for_client("a"))


def test_a_policy_for_the_longest_default_prefix_and_names_fits_sts() -> None:
    bucket = "b" * 63
    prefix = f"fedkube/{'n' * 63}/{'j' * MAX_JOB_NAME}-1a2b3c4d/"

    for role in (Role.aggregator(), Role.for_client("c" * MAX_CLIENT_NAME)):
        assert len(policy_json(session_policy(bucket, prefix, role))) <= 2048


def test_a_policy_too_long_for_sts_names_the_prefix() -> None:
    with pytest.raises(CredentialsError, match=r"2048.*shorten spec.storage.prefix"):
        session_policy("fedkube", "p" * 300 + "/", Role.for_client("a"))


@pytest.mark.parametrize("name", ["", "a/b", "a*", "a?", "$a"])
def test_a_client_name_that_would_widen_a_policy_is_refused(name: str) -> None:
    with pytest.raises(CredentialsError, match="cannot appear in a store policy"):
        Role.for_client(name)


def test_roles_print_as_the_contract_names_them() -> None:
    assert str(Role.aggregator()) == "aggregator"
    assert str(Role.for_client("hospital-a")) == "client hospital-a"


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("rounds/??????/round.json", "rounds/000001/round.json", True),
        ("rounds/??????/round.json", "rounds/0000001/round.json", False),
        ("rounds/??????/updates/global.json", "rounds/000001/updates/b.json", False),
        ("final/*", "final/model.safetensors", True),
        ("final/*", "final/a/b", True),
        ("job.json", "job.json.bak", False),
        ("job.json", "jobXjson", False),
    ],
)
def test_globs_match_like_iam_resources(pattern: str, key: str, matches: bool) -> None:
    assert glob_matches(pattern, key) is matches


def test_a_client_may_read_its_own_update_but_not_another_clients() -> None:
    role = Role.for_client("a")

    assert may_read(role, "rounds/000003/updates/a.json")
    assert not may_read(role, "rounds/000003/updates/b.json")
    assert not may_read(role, "control/excluded.json")
    assert may_read(Role.aggregator(), "control/excluded.json")


# ---- credentials.json ----------------------------------------------------------------------


def test_credentials_round_trip_through_the_file_format() -> None:
    creds = make_credentials()

    data = dump_credentials(creds)

    assert json.loads(data) == {
        "accessKeyId": "ASIAEXAMPLE",
        "secretAccessKey": "s3cr3t-value",
        "sessionToken": "token-value",
        "expiration": "2026-01-31T12:00:00Z",
    }
    assert load_credentials(data) == creds


def test_the_repr_of_credentials_shows_no_secret() -> None:
    text = repr(make_credentials())

    assert "s3cr3t" not in text
    assert "token-value" not in text
    assert "ASIAEXAMPLE" not in text
    assert "2026-01-31T12:00:00Z" in text


def test_an_expiration_with_an_offset_is_read_as_utc() -> None:
    data = json.loads(dump_credentials(make_credentials()))
    data["expiration"] = "2026-01-31T13:00:00+01:00"

    assert load_credentials(json.dumps(data)).expiration == EXPIRES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"accessKeyId": None}, r"field 'accessKeyId' is missing"),
        ({"secretAccessKey": ""}, r"field 'secretAccessKey' is empty"),
        ({"sessionToken": 42}, r"field 'sessionToken' is a JSON int"),
        ({"expiration": "tomorrow"}, r"field 'expiration' is 'tomorrow', not an RFC 3339"),
        ({"expiration": "2026-01-31T12:00:00"}, r"field 'expiration' .* with a time zone"),
        ({"accessKeyID": "x"}, r"unknown field\(s\) 'accessKeyID'"),
    ],
)
def test_a_bad_credentials_file_names_the_file_and_the_field(
    change: dict[str, object], message: str
) -> None:
    data = json.loads(dump_credentials(make_credentials()))
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value

    with pytest.raises(CredentialsError, match=rf"^/run/creds.json: {message}") as caught:
        load_credentials(json.dumps(data), source="/run/creds.json")

    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", r"is not JSON"),
        ("[]", r"holds a JSON list"),
        ("", r"is not JSON"),
    ],
)
def test_a_credentials_file_that_is_not_a_json_object_is_refused(data: str, message: str) -> None:
    with pytest.raises(CredentialsError, match=rf"^creds.json {message}"):
        load_credentials(data, source="creds.json")


def test_writing_a_credentials_file_leaves_only_the_owner_able_to_read_it(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"

    write_credentials_file(path, make_credentials())
    write_credentials_file(path, make_credentials(access_key_id="ASIANEWER"))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_credentials_file(path).access_key_id == "ASIANEWER"
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]


def test_a_missing_credentials_file_names_the_file_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"nothing.json.*FEDKUBE_STORE_CREDENTIALS_FILE"):
        read_credentials_file(tmp_path / "nothing.json")


def test_credentials_know_the_time_they_have_left() -> None:
    creds = make_credentials()

    assert creds.remaining(EXPIRES - timedelta(minutes=5)) == timedelta(minutes=5)
    assert creds.remaining(EXPIRES + timedelta(seconds=1)) < timedelta(0)
