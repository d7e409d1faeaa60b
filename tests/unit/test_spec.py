"""The FederatedJob models: good specs load, bad ones fail naming the field, value and fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedcore.errors import SpecError
from fedcore.spec import ClientSpec, FederatedJob, job_prefix, load_job, parse_job, parse_spec


def make_job(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "rounds": 3,
        "task": {"entrypoint": "fedcore.tasks.digits:task", "config": {"hidden": 32}},
        "clients": [{"name": "hospital-a"}, {"name": "hospital-b", "replicas": 2}],
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "demo"},
        "spec": spec,
    }


def problems_of(obj: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_job(obj)
    return dict(caught.value.problems)


def test_minimal_job_gets_documented_defaults() -> None:
    job = parse_job(make_job())

    assert job.spec.strategy.name == "fedavg"
    assert job.spec.min_clients == 2  # unset minClients means every client
    assert job.spec.run_policy.backoff_limit == 3
    assert job.spec.clients[1].world_size == 2
    assert job.spec.storage.endpoint is None


def test_camel_case_wire_names_round_trip() -> None:
    job = parse_job(make_job(strategy={"minClients": 1, "fractionFit": 0.5}))

    wire = job.to_object()

    assert wire["spec"]["strategy"]["minClients"] == 1
    assert parse_job(wire) == job


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        pytest.param({"rounds": 0}, "spec.rounds", ">= 1", id="zero rounds"),
        pytest.param({"rounds": -5}, "spec.rounds", "got -5", id="negative rounds"),
        pytest.param({"clients": []}, "spec.clients", "at least 1", id="no clients"),
        pytest.param(
            {"clients": [{"name": "a"}, {"name": "a"}]},
            "spec.clients[1].name",
            "duplicate client name 'a'",
            id="duplicate client names",
        ),
        pytest.param(
            {"clients": [{"name": "a", "replicas": 0}]},
            "spec.clients[0].replicas",
            ">= 1",
            id="zero replicas",
        ),
        pytest.param(
            {"clients": [{"name": "Hospital_A"}]},
            "spec.clients[0].name",
            "DNS label",
            id="client name not a DNS label",
        ),
        pytest.param(
            {"strategy": {"minClients": 3}},
            "spec.strategy.minClients",
            "more than the 2 clients",
            id="minClients above the client count",
        ),
        pytest.param(
            {"strategy": {"name": "fedsgd"}},
            "spec.strategy.name",
            "'trimmedmean', 'krum', 'dpfedavg' or 'scaffold'",
            id="unknown strategy",
        ),
        pytest.param(
            {"strategy": {"serverMomentum": 0.9}},
            "spec.strategy",
            "set strategy.name: fedavgm",
            id="momentum without fedavgm",
        ),
        pytest.param({"bogus": 1}, "spec.bogus", "unknown field", id="unknown field"),
        pytest.param(
            {"task": {"entrypoint": "fedcore.tasks.digits"}},
            "spec.task.entrypoint",
            "'module:attribute'",
            id="entrypoint without attribute",
        ),
        pytest.param(
            {"storage": {"endpoint": "minio:9000"}},
            "spec.storage.endpoint",
            "http(s) URL",
            id="endpoint without scheme",
        ),
        pytest.param(
            {"storage": {"prefix": "../escape"}},
            "spec.storage.prefix",
            "'..'",
            id="prefix escaping upwards",
        ),
        pytest.param(
            {
                "clients": [
                    {
                        "name": "a",
                        "gpu": True,
                        "procsPerReplica": 2,
                        "resources": {"limits": {"nvidia.com/gpu": 4}},
                    }
                ]
            },
            "spec.clients[0]",
            "procsPerReplica=2",
            id="gpu limit disagreeing with processes",
        ),
    ],
)
def test_invalid_spec_names_the_field_and_the_fix(
    overrides: dict[str, Any], field: str, words: str
) -> None:
    problems = problems_of(make_job(**overrides))

    assert field in problems, problems
    assert words in problems[field]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(make_job(rounds=0, bogus=True, strategy={"name": "x"}))

    assert set(problems) == {"spec.rounds", "spec.bogus", "spec.strategy.name"}


def test_cross_field_problems_are_reported_together() -> None:
    problems = problems_of(
        make_job(clients=[{"name": "a"}, {"name": "a"}], strategy={"minClients": 3})
    )

    assert set(problems) == {"spec.clients[1].name", "spec.strategy.minClients"}


def test_parse_spec_reports_fields_under_spec() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"rounds": 0, "task": {"entrypoint": "a:b"}, "clients": [{"name": "a"}]})

    assert caught.value.problems[0][0] == "spec.rounds"


def test_client_task_config_overrides_the_job_task_config() -> None:
    job = parse_job(make_job(clients=[{"name": "a", "taskConfig": {"hidden": 8, "path": "/d"}}]))

    assert job.spec.task_config_for("a") == {"hidden": 8, "path": "/d"}


def test_unknown_client_lookup_lists_known_clients() -> None:
    job = parse_job(make_job())

    with pytest.raises(SpecError, match="known clients: hospital-a, hospital-b"):
        job.spec.client("nope")


@pytest.mark.parametrize(
    ("fraction", "available", "expected"),
    [(1.0, 5, 5), (0.5, 5, 3), (0.1, 5, 2), (0.5, 1, 1)],
)
def test_clients_per_round_respects_fraction_and_quorum(
    fraction: float, available: int, expected: int
) -> None:
    clients = [{"name": f"c{i}"} for i in range(5)]
    job = parse_job(make_job(clients=clients, strategy={"minClients": 2, "fractionFit": fraction}))

    assert job.spec.clients_per_round(available) == expected


def test_job_prefix_is_unique_per_job_and_overridable() -> None:
    obj = make_job()
    obj["metadata"] = {"name": "demo", "namespace": "team-a", "uid": "0123456789abcdef"}

    assert job_prefix(parse_job(obj)) == "fedkube/team-a/demo-01234567/"
    assert job_prefix(parse_job(make_job(storage={"prefix": "x/y"}))) == "x/y/"
    assert job_prefix(parse_job(make_job())) == "fedkube/local/demo/"


def test_load_job_reads_yaml_and_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "My Job.yaml"
    path.write_text(
        "kind: FederatedJob\nspec:\n  rounds: 0\n  task: {entrypoint: 'a:b'}\n"
        "  clients: [{name: a}]\n"
    )

    with pytest.raises(SpecError) as caught:
        load_job(path)

    assert str(path) in str(caught.value)
    assert caught.value.problems == [("spec.rounds", "must be >= 1 (got 0)")]


def test_load_job_without_metadata_names_the_job_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "My Job.yaml"
    path.write_text("spec:\n  rounds: 1\n  task: {entrypoint: 'a:b'}\n  clients: [{name: a}]\n")

    assert load_job(path).name == "my-job"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("rounds: [", "not valid YAML"),
        ("kind: Pod\n", "no FederatedJob document"),
        ("", "no FederatedJob"),
    ],
)
def test_load_job_rejects_files_that_are_not_jobs(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)

    with pytest.raises(SpecError, match=words):
        load_job(path)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_job(tmp_path / "absent.yaml")


def test_models_are_immutable() -> None:
    job = parse_job(make_job())

    with pytest.raises(Exception, match="frozen"):
        job.spec.rounds = 7  # type: ignore[misc]
    assert isinstance(job, FederatedJob)


@pytest.mark.parametrize(
    ("env_name", "where"),
    [
        pytest.param("PET_NODE_RANK", "clients", id="a client may not set its rank"),
        pytest.param("MASTER_ADDR", "clients", id="a client may not move the rendezvous"),
        pytest.param("WORLD_SIZE", "clients", id="a client may not change the world size"),
        pytest.param(
            "FEDKUBE_SIGNING_KEYS_DIR", "aggregator", id="the aggregator may not read other keys"
        ),
        pytest.param(
            "AWS_SECRET_ACCESS_KEY",
            "clients",
            id="credentials come from secretRef when one is named",
        ),
    ],
)
def test_reserved_environment_is_refused_naming_the_field(env_name: str, where: str) -> None:
    item = [{"name": "OK", "value": "1"}, {"name": env_name, "value": "x"}]
    storage = {"endpoint": "http://s3:9000", "secretRef": {"name": "creds"}}
    if where == "clients":
        obj = make_job(clients=[{"name": "a"}, {"name": "b", "env": item}], storage=storage)
        field = "spec.clients[1].env[1].name"
    else:
        obj = make_job(aggregator={"env": item}, storage=storage)
        field = "spec.aggregator.env[1].name"

    problems = problems_of(obj)

    assert list(problems) == [field]
    assert env_name in problems[field]
    assert "remove it" in problems[field]


def test_credentials_may_come_from_user_env_when_no_secret_is_named() -> None:
    obj = make_job(
        storage={"endpoint": "http://s3:9000"},
        clients=[{"name": "a", "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "x"}]}],
    )

    assert parse_job(obj).spec.clients[0].env[0]["name"] == "AWS_ACCESS_KEY_ID"


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        pytest.param({"rounds": "10"}, "spec.rounds", "must be an integer", id="quoted number"),
        pytest.param({"rounds": True}, "spec.rounds", "a boolean", id="boolean as number"),
        pytest.param({"rounds": 2.5}, "spec.rounds", "must be an integer", id="fraction"),
        pytest.param(
            {"clients": [{"name": "a", "gpu": "yes"}]},
            "spec.clients[0].gpu",
            "must be true or false",
            id="string as boolean",
        ),
        pytest.param(
            {"strategy": {"fractionFit": "0.5"}},
            "spec.strategy.fractionFit",
            "without quotes",
            id="quoted float",
        ),
    ],
)
def test_types_are_not_coerced(overrides: dict[str, Any], field: str, words: str) -> None:
    problems = problems_of(make_job(**overrides))

    assert words in problems[field]


def test_snake_case_field_names_are_unknown_and_the_message_gives_the_camel_case_one() -> None:
    problems = problems_of(make_job(clients=[{"name": "a", "procs_per_replica": 2}]))

    assert problems == {
        "spec.clients[0].procs_per_replica": (
            "unknown field; field names are camelCase: write procsPerReplica"
        )
    }


def test_python_code_still_builds_models_by_attribute_name() -> None:
    client = ClientSpec(name="a", procs_per_replica=2)

    assert client.world_size == 2


def test_api_objects_with_defaults_filled_in_parse_again() -> None:
    wire = parse_job(make_job()).model_dump(mode="json", by_alias=True)

    assert parse_job(wire).spec == parse_job(make_job()).spec


@pytest.mark.parametrize("name", ["1digits", "Digits", "digits-", "dig.its"])
def test_job_names_follow_the_crd_rule(name: str) -> None:
    obj = make_job()
    obj["metadata"]["name"] = name

    assert "DNS-1035 label" in problems_of(obj)["metadata.name"]


@pytest.mark.parametrize(
    ("prefix", "ok"),
    [
        ("", True),
        ("teams/a/", True),
        ("teams/.hidden/.../v1.2", True),
        ("/teams", False),
        ("teams//a", False),
        ("teams/./a", False),
        ("..", False),
        ("a/../b/", False),
    ],
)
def test_storage_prefix_is_a_relative_key_path(prefix: str, ok: bool) -> None:
    obj = make_job(storage={"prefix": prefix})

    if ok:
        assert parse_job(obj).spec.storage.prefix == prefix
    else:
        assert "relative key path" in problems_of(obj)["spec.storage.prefix"]


@pytest.mark.parametrize(
    ("env", "field", "words"),
    [
        ([{"value": "x"}], "spec.clients[0].env[0].name", "required"),
        ([{"name": "EPOCHS", "value": 5}], "spec.clients[0].env[0].value", 'value: "5"'),
        ([{"name": 5}], "spec.clients[0].env[0].name", "must be a string"),
    ],
)
def test_env_entries_need_a_string_name_and_value(
    env: list[dict[str, Any]], field: str, words: str
) -> None:
    problems = problems_of(make_job(clients=[{"name": "a", "env": env}]))

    assert words in problems[field]


def test_gpu_limit_must_be_a_whole_number_or_a_quantity_string() -> None:
    client = {"name": "a", "resources": {"limits": {"nvidia.com/gpu": True}}}

    problems = problems_of(make_job(clients=[client]))

    assert "whole number" in problems["spec.clients[0].resources.limits['nvidia.com/gpu']"]


def test_nulls_and_whole_floats_read_as_the_api_server_reads_them() -> None:
    job = parse_job(make_job(rounds=10.0, seed=None, strategy=None, image=None))

    assert job.spec.rounds == 10
    assert isinstance(job.spec.rounds, int)
    assert job.spec.seed == 0
    assert job.spec.strategy.name == "fedavg"


def test_free_form_objects_keep_their_nulls_and_floats() -> None:
    job = parse_job(make_job(task={"entrypoint": "a:b", "config": {"lr": 1.0, "extra": None}}))

    assert job.spec.task.config == {"lr": 1.0, "extra": None}
    assert isinstance(job.spec.task.config["lr"], float)


def test_load_job_checks_every_document_and_returns_the_first(tmp_path: Path) -> None:
    job = "kind: FederatedJob\nmetadata: {name: NAME}\nspec:\n  rounds: ROUNDS\n"
    job += "  task: {entrypoint: 'a:b'}\n  clients: [{name: a}]\n"
    path = tmp_path / "jobs.yaml"
    first = job.replace("NAME", "first").replace("ROUNDS", "1")
    path.write_text(first + "---\n" + job.replace("NAME", "second").replace("ROUNDS", "0"))

    with pytest.raises(SpecError) as caught:
        load_job(path)
    path.write_text(first + "---\n" + job.replace("NAME", "second").replace("ROUNDS", "2"))

    assert caught.value.problems == [("spec.rounds", "must be >= 1 (got 0)")]
    assert caught.value.places == ["document 1, line 11"]
    assert load_job(path).name == "first"
