"""The catalogue of reasons: complete, every Warning says what to do, the docs page is its
rendering, and no reason is emitted that it lacks."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from fedcore.validation import REJECT_REASONS
from fedop import catalogue, events, events_doc, rejections, status
from fedop.catalogue import CATALOGUE, NOTHING, REASONS

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "operator" / "fedop"
CAMEL = re.compile(r"^[A-Z][a-z]+(?:[A-Z][A-Za-z]*)*$")
EMITTERS = {
    "announce",
    "normal",
    "warning",
    "message",
    "condition",
    "set_condition",
    "refuse",
    "_refuse",
    "_Failure",
}
"""Calls whose CamelCase string arguments are reasons (or condition types)."""


def test_every_reason_has_an_entry_and_every_entry_is_a_reason() -> None:
    assert sorted(CATALOGUE) == sorted(REASONS)


@pytest.mark.parametrize("reason", [r for r in REASONS if CATALOGUE[r].event == "Warning"])
def test_every_warning_says_what_to_do_for_each_of_its_causes(reason: str) -> None:
    entry = CATALOGUE[reason]  # type: ignore[index]

    for action in (entry.action, *entry.causes.values()):
        assert action.strip()
        assert action != NOTHING


WARNINGS = [
    pytest.param(reason, cause, id=f"{reason} ({cause or 'any cause'})")
    for reason, entry in CATALOGUE.items()
    if entry.event == "Warning"
    for cause in (None, *entry.causes)
]


@pytest.mark.parametrize(("reason", "cause"), WARNINGS)
def test_every_warning_event_ends_with_its_catalogue_action(reason: str, cause: str | None) -> None:
    action = CATALOGUE[reason].action_for(cause).format(**events_doc.DOC_FIELDS)  # type: ignore[index]

    announced = events.announce(reason, "something happened", cause=cause, **events_doc.DOC_FIELDS)  # type: ignore[arg-type]

    assert announced.type == "Warning"
    assert announced.message == f"something happened. {action}"


@pytest.mark.parametrize("reason", REASONS)
def test_every_entry_says_when_and_fills_its_actions_from_known_fields(reason: str) -> None:
    entry = CATALOGUE[reason]

    assert entry.when.strip()
    for action in (entry.action, *entry.causes.values()):
        action.format(**events_doc.DOC_FIELDS)  # an unknown {field} raises KeyError


def test_every_condition_named_by_the_catalogue_exists() -> None:
    named = {c for entry in CATALOGUE.values() for c in entry.conditions}

    assert named <= set(status.CONDITION_ORDER)


def test_a_reason_no_event_carries_is_named_by_some_condition() -> None:
    for reason, entry in CATALOGUE.items():
        assert entry.event is not None or entry.conditions, reason


def test_rejection_advice_covers_exactly_the_reject_reasons() -> None:
    assert sorted(rejections.ADVICE) == sorted(REJECT_REASONS)
    assert sorted(CATALOGUE["UpdateRejected"].causes) == sorted(REJECT_REASONS)


def test_a_condition_reason_cannot_be_announced_as_an_event() -> None:
    with pytest.raises(ValueError, match="ChildrenCreated is a condition reason"):
        events.announce("ChildrenCreated", "created")


@pytest.mark.parametrize(
    ("helper", "reason"),
    [
        pytest.param(events.normal, "ClientDropped", id="a Warning cannot be announced as Normal"),
        pytest.param(events.warning, "RoundCommitted", id="news cannot be announced as a Warning"),
    ],
)
def test_the_type_of_an_event_is_the_catalogues(
    helper: Callable[[str, str], events.Announcement], reason: str
) -> None:
    with pytest.raises(ValueError, match=f"{reason} is a"):
        helper(reason, "x")


def test_the_plain_helpers_still_add_the_action() -> None:
    announced = events.warning("ClientDropped", "client a dropped")

    assert announced.message == (
        "client a dropped. The job goes on without it (a dropped client does not rejoin this job)."
    )


# ---- the docs page ----------------------------------------------------------------------------


def test_docs_events_page_is_what_the_catalogue_renders() -> None:
    committed = (REPO / events_doc.OUTPUT).read_text()

    assert committed == events_doc.render(), "docs/events.md is stale: run `make events-doc`"


def test_docs_page_lists_every_reason_and_every_cause() -> None:
    page = events_doc.render()

    for reason, entry in CATALOGUE.items():
        assert f"| `{reason}` |" in page
        for cause in entry.causes:
            assert f"| `{reason}` | `{cause}` |" in page


def test_check_mode_reports_a_stale_page_and_accepts_a_fresh_one(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / events_doc.OUTPUT).write_text("# old\n")

    stale = events_doc.main(["--check", "--root", str(tmp_path)])
    events_doc.main(["--root", str(tmp_path)])
    fresh = events_doc.main(["--check", "--root", str(tmp_path)])

    assert (stale, fresh) == (1, 0)


# ---- nothing is emitted outside the catalogue -------------------------------------------------


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def emitted_names() -> dict[str, list[str]]:
    """CamelCase string literals passed to an emitting call, by source file."""
    found: dict[str, list[str]] = {}
    for path in sorted(OPERATOR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or _called(node) not in EMITTERS:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    name = arg.value
                    if CAMEL.match(name):
                        found.setdefault(path.name, []).append(name)
    return found


def test_every_reason_the_operator_source_emits_is_in_the_catalogue() -> None:
    known = set(REASONS) | set(status.CONDITION_ORDER) | {"True", "False", "Unknown"}

    unknown = {f: sorted(set(v) - known) for f, v in emitted_names().items() if set(v) - known}

    assert unknown == {}
    assert "ClientDropped" in emitted_names()["reconcile.py"]  # the scan does see emissions


def test_only_events_announce_builds_an_announcement() -> None:
    builders = []
    for path in sorted(OPERATOR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _called(node) == "Announcement":
                builders.append(path.name)

    assert builders == ["events.py"]


def test_reason_constants_elsewhere_are_catalogue_reasons() -> None:
    from fedop import reconcile, refused

    for reason in (*reconcile.REFUSED_FOR_SPEC, reconcile.SHARED_CREDENTIALS, refused.REASON):
        assert reason in CATALOGUE


def test_the_event_note_limit_is_kubernetes_one_kib() -> None:
    assert catalogue.EVENT_NOTE_BYTES == 1024
