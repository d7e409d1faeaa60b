"""The FederatedJob CRD: generated from the spec models, committed fresh, structural.

The API server refuses a CRD whose schema is not structural and prunes status fields the
schema does not declare, so these properties are checked here without a cluster; what the
API server does with the rules is checked in tests/e2e/test_crd_validation.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from fedcore import spec as fs
from fedcore.errors import SpecError
from fedop import crd, site_crd

REPO = Path(__file__).resolve().parents[2]
Schema = dict[str, Any]


@pytest.fixture(scope="module")
def generated() -> Schema:
    return crd.crd()


@pytest.fixture(scope="module")
def schema(generated: Schema) -> Schema:
    root: Schema = generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def nodes(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node below ``node`` with its path (``a.b``, ``a[]``, ``a{}``)."""
    yield path or "<root>", node
    for name, sub in node.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


def at(schema: Schema, path: str) -> Schema:
    node = schema
    for part in path.split("."):
        if part.endswith("[]"):
            node = node["properties"][part[:-2]]["items"]
        else:
            node = node["properties"][part]
    return node


def rules(node: Schema) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


# ---- generated == committed -------------------------------------------------------------------


@pytest.mark.parametrize("copy", crd.OUTPUTS, ids=str)
def test_committed_crd_copy_is_what_the_models_generate(copy: Path) -> None:
    committed = (REPO / copy).read_text()

    assert committed == crd.render(), f"{copy} is stale: run `make crds` and commit the result"


@pytest.mark.parametrize("copy", site_crd.OUTPUTS, ids=str)
def test_committed_site_crd_copy_is_what_the_models_generate(copy: Path) -> None:
    committed = (REPO / copy).read_text()

    assert committed == site_crd.render(), f"{copy} is stale: run `make crds` and commit it"


def test_check_mode_reports_a_stale_copy(tmp_path: Path) -> None:
    for copy, text in crd.generated().items():
        (tmp_path / copy).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / copy).write_text(text)
    (tmp_path / crd.OUTPUTS[1]).write_text(crd.render().replace("maxLength: 40", "maxLength: 41"))

    assert crd.main(["--check", "--root", str(tmp_path)]) == 1
    assert crd.stale(tmp_path) == [crd.OUTPUTS[1]]


def test_write_mode_makes_both_copies_identical(tmp_path: Path) -> None:
    assert crd.main(["--root", str(tmp_path)]) == 0

    texts = {(tmp_path / copy).read_text() for copy in crd.OUTPUTS}
    assert texts == {crd.render()}
    assert {(tmp_path / copy).read_text() for copy in site_crd.OUTPUTS} == {site_crd.render()}
    assert crd.main(["--check", "--root", str(tmp_path)]) == 0


# ---- structural -------------------------------------------------------------------------------


def test_schema_has_no_json_schema_constructs_the_api_server_rejects(schema: Schema) -> None:
    text = yaml.safe_dump(schema)
    forbidden = ("$ref", "$defs", "anyOf", "allOf", "oneOf", "title:", "const:")

    assert [word for word in forbidden if word in text] == []


def test_every_schema_node_has_a_type(schema: Schema) -> None:
    # int-or-string nodes are the exception structural schemas require: they carry no type.
    untyped = [
        path
        for path, node in nodes(schema)
        if "type" not in node and not node.get("x-kubernetes-int-or-string")
    ]

    assert untyped == []


def test_free_form_objects_preserve_unknown_fields_instead_of_additional_properties(
    schema: Schema,
) -> None:
    wrong = [
        path
        for path, node in nodes(schema)
        if isinstance(node.get("additionalProperties"), bool)
        or (node.get("x-kubernetes-preserve-unknown-fields") and node["type"] != "object")
    ]

    assert wrong == []
    assert at(schema, "spec.task.config")["x-kubernetes-preserve-unknown-fields"] is True
    assert at(schema, "spec.clients[].resources")["x-kubernetes-preserve-unknown-fields"] is True


def test_string_maps_keep_their_value_schema(schema: Schema) -> None:
    selector = at(schema, "spec.clients[].nodeSelector")

    assert selector["type"] == "object"
    assert selector["additionalProperties"] == {"type": "string", "maxLength": 63}


def test_every_string_and_list_is_bounded_for_cel_cost_estimation(schema: Schema) -> None:
    unbounded = [
        path
        for path, node in nodes(schema)
        if (
            path not in ("apiVersion", "kind")  # checked by the API server, not by CEL rules
            and (node.get("type") == "string" and "maxLength" not in node and "format" not in node)
        )
        or (node.get("type") == "array" and "maxItems" not in node)
    ]

    assert unbounded == []


def test_optional_fields_are_nullable_without_a_null_default(schema: Schema) -> None:
    for path in ("spec.image", "spec.storage.endpoint", "spec.strategy.minClients"):
        node = at(schema, path)
        assert node.get("nullable") is True, path
        assert "default" not in node, path


def test_exclusive_bounds_use_the_openapi_v3_boolean_form(schema: Schema) -> None:
    fraction = at(schema, "spec.strategy.fractionFit")

    assert (fraction["minimum"], fraction["exclusiveMinimum"]) == (0.0, True)
    for path, node in nodes(schema):
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, True), bool), path


def test_descriptions_come_from_the_models_attribute_docstrings(schema: Schema) -> None:
    assert at(schema, "spec.rounds")["description"] == "Federated rounds to run."
    assert "``" not in yaml.safe_dump(schema)


def test_crd_defaults_agree_with_the_model_defaults(schema: Schema) -> None:
    minimal: dict[str, Any] = {
        "metadata": {"name": "job"},
        "spec": {
            "rounds": 2,
            "task": {"entrypoint": "fedcore.tasks.digits:task"},
            "clients": [{"name": "a"}],
            "storage": {"secretRef": {"name": "s3"}},
            "strategy": {},
            "runPolicy": {},
            "aggregator": {},
        },
    }
    defaulted = apply_defaults(schema, yaml.safe_load(yaml.safe_dump(minimal)))

    assert defaulted != minimal
    assert fs.parse_job(defaulted) == fs.parse_job(minimal)


def apply_defaults(node: Schema, value: Any) -> Any:
    """What the API server's defaulting does: fill absent properties of present objects."""
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = sub["default"]
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in node:
        return [apply_defaults(node["items"], v) for v in value]
    return value


class _Unbounded(BaseModel):
    note: str = ""


class _Union(BaseModel):
    value: int | str = 0


class _Untyped(BaseModel):
    anything: Any = Field(default=None)


@pytest.mark.parametrize(
    ("model", "complaint"),
    [
        (_Unbounded, "note: string without a bound"),
        (_Union, "only 'X | None' unions"),
        (_Untyped, "every schema node needs a type"),
    ],
    ids=["unbounded string", "union of two types", "untyped field"],
)
def test_generator_refuses_models_it_cannot_express_structurally(
    model: type[BaseModel], complaint: str
) -> None:
    with pytest.raises(crd.SchemaNotStructural, match=complaint):
        crd.structural(model.model_json_schema(mode="validation"))


# ---- status -----------------------------------------------------------------------------------


def test_status_schema_declares_every_field_the_operator_writes(schema: Schema) -> None:
    # The API server silently prunes undeclared status fields: every key of a fully
    # populated status must be in the schema.
    now = datetime(2026, 1, 1, tzinfo=UTC)
    summary = fs.RoundSummary(
        round=3, participants=["a"], metrics={"accuracy": 0.9}, duration_seconds=1.5, rejected=1
    )
    status = fs.FederatedJobStatus(
        phase="Running",
        observed_generation=2,
        current_round=3,
        total_rounds=10,
        progress="3/10",
        active_clients=1,
        conditions=[
            fs.Condition(
                type="Ready",
                status="True",
                reason="Running",
                message="m",
                last_transition_time=now,
                observed_generation=2,
            )
        ],
        clients={"a": fs.ClientStatus(phase="Running", last_round=3, num_samples=100)},
        last_round=summary,
        history=[summary],
        model=fs.ModelRef(uri="s3://b/k", sha256="0" * 64),
        start_time=now,
        completion_time=now,
        message="running",
    )
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)

    assert undeclared(at(schema, "status"), dumped) == []


def undeclared(node: Schema, value: Any, path: str = "status") -> list[str]:
    missing: list[str] = []
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return missing
    if isinstance(value, dict):
        for key, sub in value.items():
            if "properties" in node and key in node["properties"]:
                missing += undeclared(node["properties"][key], sub, f"{path}.{key}")
            elif isinstance(node.get("additionalProperties"), dict):
                missing += undeclared(node["additionalProperties"], sub, f"{path}.{key}")
            else:
                missing.append(f"{path}.{key}")
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            missing += undeclared(node["items"], sub, f"{path}[{index}]")
    return missing


def test_status_is_a_subresource_with_observed_generation(
    generated: Schema, schema: Schema
) -> None:
    version = generated["spec"]["versions"][0]

    assert version["subresources"] == {"status": {}}
    assert at(schema, "status.observedGeneration")["type"] == "integer"


# ---- names, columns, rules --------------------------------------------------------------------


def test_resource_names_short_names_and_category(generated: Schema) -> None:
    spec = generated["spec"]

    assert generated["metadata"]["name"] == "federatedjobs.fedkube.io"
    assert (spec["group"], spec["scope"]) == ("fedkube.io", "Namespaced")
    assert spec["names"]["kind"] == "FederatedJob"
    assert spec["names"]["shortNames"] == ["fj", "fedjob"]
    assert spec["names"]["categories"] == ["fedkube"]
    assert spec["preserveUnknownFields"] is False
    assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [
        ("v1alpha1", True, True)
    ]


def test_printer_columns_show_phase_round_accuracy_epsilon_clients_age(
    generated: Schema, schema: Schema
) -> None:
    columns = generated["spec"]["versions"][0]["additionalPrinterColumns"]

    assert [(c["name"], c["jsonPath"]) for c in columns] == [
        ("Phase", ".status.phase"),
        ("Round", ".status.progress"),
        ("Accuracy", ".status.lastRound.metrics.accuracy"),
        ("Epsilon", ".status.lastRound.epsilon"),
        ("Clients", ".status.activeClients"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    assert [c["name"] for c in columns if c.get("priority")] == ["Epsilon"]  # -o wide
    assert at(schema, "status.progress")["type"] == "string"
    assert at(schema, "status.lastRound.epsilon")["type"] == "number"
    assert at(schema, "status.activeClients")["type"] == "integer"
    assert at(schema, "status.lastRound.metrics")["additionalProperties"]["type"] == "number"


def test_client_names_are_unique_through_a_map_list(schema: Schema) -> None:
    clients = at(schema, "spec.clients")

    assert clients["x-kubernetes-list-type"] == "map"
    assert clients["x-kubernetes-list-map-keys"] == ["name"]
    assert "name" in clients["items"]["required"]


def test_cross_field_rules_are_cel_validations(schema: Schema) -> None:
    root = rules(schema)
    spec_rules = rules(schema["properties"]["spec"])

    assert any("self.strategy.minClients <= size(self.clients)" in r for r in spec_rules)
    assert any("serverMomentum" in r for r in rules(at(schema, "spec.strategy")))
    assert "!has(self.clipQuantile) || has(self.clipNorm)" in rules(at(schema, "spec.strategy"))
    assert any("self.name != 'aggregator'" in r for r in rules(at(schema, "spec.clients[]")))
    assert f"size(self.metadata.name) <= {fs.MAX_JOB_NAME}" in root
    assert any(
        "self.spec.clients.all(c, size(self.metadata.name) + size(c.name)" in r for r in root
    )
    assert any("self.metadata.name.matches('^[a-z]" in r for r in root)


def test_every_reserved_env_name_is_refused_by_a_cel_rule_in_each_env_list(schema: Schema) -> None:
    for path in ("spec.aggregator.env[]", "spec.clients[].env[]"):
        entry = at(schema, path)
        (rule,) = rules(entry)
        assert entry["required"] == ["name"], path
        assert all(f"'{name}'" in rule for name in fs.RESERVED_ENV), path
        assert all(f"startsWith('{p}')" in rule for p in fs.RESERVED_ENV_PREFIXES), path


def test_credential_env_next_to_a_secret_ref_is_refused(schema: Schema) -> None:
    (rule,) = [r for r in rules(schema["properties"]["spec"]) if "secretRef" in r]

    assert all(f"'{name}'" in rule for name in fs.CREDENTIAL_ENV)
    assert "self.aggregator.env.all(" in rule
    assert "c.env.all(" in rule


def test_gpu_limit_rule_compares_with_procs_per_replica(schema: Schema) -> None:
    limits = at(schema, "spec.clients[].resources.limits")
    (rule,) = [r for r in rules(at(schema, "spec.clients[]")) if "gpu" in r]

    assert limits["properties"]["nvidia.com/gpu"]["x-kubernetes-int-or-string"] is True
    assert "string(self.procsPerReplica)" in rule


def test_storage_prefix_carries_the_models_pattern(schema: Schema) -> None:
    assert at(schema, "spec.storage.prefix")["pattern"] == fs.PREFIX


@pytest.mark.parametrize("field", ["rounds", "seed", "task", "storage", "strategy", "clients"])
def test_training_fields_are_frozen_while_running_or_suspended(schema: Schema, field: str) -> None:
    frozen = [
        r
        for r in schema["x-kubernetes-validations"]
        if "oldSelf" in r["rule"] and r.get("fieldPath") == f".spec.{field}"
    ]

    assert len(frozen) == 1
    assert "oldSelf.status.phase in ['Running', 'Suspended']" in frozen[0]["rule"]
    assert f"self.spec.{field}" in frozen[0]["rule"]


def test_suspend_and_scheduling_fields_stay_mutable(schema: Schema) -> None:
    transition_rules = " ".join(r for r in rules(schema) if "oldSelf" in r)

    for free in ("runPolicy", "suspend", "nodeSelector", "tolerations", "resources", "image"):
        assert free not in transition_rules


def test_every_rule_explains_itself(schema: Schema) -> None:
    for path, node in nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message") or rule.get("messageExpression"), (path, rule["rule"])
            assert rule.get("reason", "FieldValueInvalid").startswith("FieldValue"), path


@pytest.mark.parametrize(
    ("name", "client", "replicas", "accepted"),
    [
        ("a" * fs.MAX_JOB_NAME, "a", 1, True),
        ("a" * (fs.MAX_JOB_NAME + 1), "a", 1, False),
        ("a" * 20, "c" * 40, 1, True),  # a-ccc-0: 20 + 1 + 40 + 1 + 1 = 63
        ("a" * 21, "c" * 40, 1, False),
        ("a" * 20, "c" * 40, 11, False),  # the highest pod index, 10, has two digits
    ],
    ids=[
        "longest job name is accepted",
        "job name one character too long is refused",
        "pod host name of exactly 63 characters is accepted",
        "pod host name of 64 characters is refused",
        "two-digit pod index pushes the host name over",
    ],
)
def test_spec_models_refuse_job_names_that_break_child_names(
    name: str, client: str, replicas: int, accepted: bool
) -> None:
    obj = {
        "metadata": {"name": name},
        "spec": {
            "rounds": 1,
            "task": {"entrypoint": "fedcore.tasks.digits:task"},
            "clients": [{"name": client, "replicas": replicas}],
        },
    }

    if accepted:
        assert fs.parse_job(obj).name == name
    else:
        with pytest.raises(SpecError, match=r"metadata\.name"):
            fs.parse_job(obj)
