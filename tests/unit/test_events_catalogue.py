"""The catalogues of reasons (a FederatedJob's and a FederatedSite's): complete, every Warning
says what to do, the docs page is their rendering, and no reason is emitted that its kind's
catalogue lacks."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest

from fedcore import site_spec as ss
from fedcore.validation import REJECT_REASONS
from fedop import catalogue, events, events_doc, rejections, status
from fedop.catalogue import CATALOGUE, CATALOGUES, NOTHING, REASONS, SITE_CATALOGUE, SITE_REASONS

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
    "announce_site",
    "set_site_condition",
    "site_message",
    "_fail",
}
"""Calls whose CamelCase string arguments are reasons (or condition types)."""


ANNOUNCE: dict[str, Callable[..., events.Announcement]] = {
    "FederatedJob": events.announce,
    "FederatedSite": events.announce_site,
}
"""Each kind's way to announce, so every test below runs for both catalogues."""
ENTRIES = [
    pytest.param(kind, reason, id=f"{kind} {reason}")
    for kind, catalogue_ in CATALOGUES.items()
    for reason in catalogue_
]


def test_every_reason_has_an_entry_and_every_entry_is_a_reason() -> None:
    assert sorted(CATALOGUE) == sorted(REASONS)
    assert sorted(SITE_CATALOGUE) == sorted(SITE_REASONS)
    assert sorted(CATALOGUES) == sorted(ANNOUNCE)


def test_every_phase_of_a_site_is_a_site_reason() -> None:
    """The Running condition of a site not running carries its phase as the reason."""
    assert set(get_args(ss.SitePhase)) <= set(SITE_REASONS)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        pytest.param(kind, reason, id=f"{kind} {reason}")
        for kind, catalogue_ in CATALOGUES.items()
        for reason, entry in catalogue_.items()
        if entry.event == "Warning"
    ],
)
def test_every_warning_says_what_to_do_for_each_of_its_causes(kind: str, reason: str) -> None:
    entry = CATALOGUES[kind][reason]

    for action in (entry.action, *entry.causes.values()):
        assert action.strip()
        assert action != NOTHING


WARNINGS = [
    pytest.param(kind, reason, cause, id=f"{kind} {reason} ({cause or 'any cause'})")
    for kind, catalogue_ in CATALOGUES.items()
    for reason, entry in catalogue_.items()
    if entry.event == "Warning"
    for cause in (None, *entry.causes)
]


@pytest.mark.parametrize(("kind", "reason", "cause"), WARNINGS)
def test_every_warning_event_ends_with_its_catalogue_action(
    kind: str, reason: str, cause: str | None
) -> None:
    action = CATALOGUES[kind][reason].action_for(cause).format(**events_doc.DOC_FIELDS)

    announced = ANNOUNCE[kind](reason, "something happened", cause=cause, **events_doc.DOC_FIELDS)

    assert announced.type == "Warning"
    assert announced.message == f"something happened. {action}"


@pytest.mark.parametrize(("kind", "reason"), ENTRIES)
def test_every_entry_says_when_and_fills_its_actions_from_known_fields(
    kind: str, reason: str
) -> None:
    entry = CATALOGUES[kind][reason]

    assert entry.when.strip()
    for action in (entry.action, *entry.causes.values()):
        action.format(**events_doc.DOC_FIELDS)  # an unknown {field} raises KeyError


def test_every_condition_named_by_the_catalogues_exists() -> None:
    named = {c for cat in CATALOGUES.values() for entry in cat.values() for c in entry.conditions}

    assert named <= set(status.CONDITION_ORDER)


def test_a_reason_no_event_carries_is_named_by_some_condition() -> None:
    for kind, catalogue_ in CATALOGUES.items():
        for reason, entry in catalogue_.items():
            assert entry.event is not None or entry.conditions, (kind, reason)


def test_a_sites_action_is_the_site_admins_not_the_coordinators() -> None:
    site = events.announce_site("ConfigurationError", "the group stopped", group="hosp-s")
    job = events.announce("ConfigurationError", "the aggregator stopped", aggregator="j-agg")

    assert "spec.template" in site.message
    assert "bundle Secret" in site.message
    assert "kubectl logs job/hosp-s" in site.message
    assert "spec.task" not in site.message
    assert "spec.task" in job.message


def test_a_site_condition_reason_cannot_be_announced_as_an_event() -> None:
    with pytest.raises(ValueError, match="Verified is a condition reason"):
        events.announce_site("Verified", "verified")


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


def test_docs_page_lists_every_reason_and_every_cause_in_its_kinds_section() -> None:
    page = events_doc.render()
    sections = page.split("\n## ")[1:]

    assert [s.split("\n", 1)[0] for s in sections] == list(CATALOGUES)
    for section, (kind, catalogue_) in zip(sections, CATALOGUES.items(), strict=True):
        for reason, entry in catalogue_.items():
            assert f"| `{reason}` |" in section, (kind, reason)
            for cause in entry.causes:
                assert f"| `{reason}` | `{cause}` |" in section, (kind, reason, cause)
    site = sections[-1]
    assert "| `ConfigurationError` | Warning | Failed |" in site
    assert "spec.task" not in site.split("`ConfigurationError`", 1)[1].split("\n", 1)[0]


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


SITE_MODULES = {
    "site_reconcile.py",
    "site_handlers.py",
    "site_store.py",
    "site_crd.py",
    "builders/site.py",
}
"""The site operator's sources (under operator/fedop): what they emit must be a
FederatedSite's reason. ``sites.py`` is the coordinator's, about a FederatedJob's sites."""


def emitted_names() -> dict[str, list[str]]:
    """CamelCase string literals passed to an emitting call, by source file (its path under
    operator/fedop)."""
    found: dict[str, list[str]] = {}
    for path in sorted(OPERATOR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or _called(node) not in EMITTERS:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    name = arg.value
                    if CAMEL.match(name):
                        where = path.relative_to(OPERATOR).as_posix()
                        found.setdefault(where, []).append(name)
    return found


def test_every_reason_the_operator_source_emits_is_in_its_kinds_catalogue() -> None:
    other = set(status.CONDITION_ORDER) | {"True", "False", "Unknown"}
    job, site = set(REASONS) | other, set(SITE_REASONS) | other
    emitted = emitted_names()

    unknown = {
        f: sorted(set(v) - (site if f in SITE_MODULES else job))
        for f, v in emitted.items()
        if set(v) - (site if f in SITE_MODULES else job)
    }

    assert unknown == {}
    assert "ClientDropped" in emitted["reconcile.py"]  # the scan does see emissions
    site_named = {p.relative_to(OPERATOR).as_posix() for p in OPERATOR.rglob("site*.py")}
    assert site_named - {"sites.py"} <= SITE_MODULES


def test_the_scan_sees_every_reason_the_site_operator_emits() -> None:
    """Each of the site's Warnings, and its condition-only reasons a literal names, is found
    in the site sources (the phase reasons come from ``SitePhase``, tested above)."""
    emitted = {n for f, v in emitted_names().items() if f in SITE_MODULES for n in v}
    phases = set(get_args(ss.SitePhase))
    expected = {r for r in SITE_REASONS if r not in phases}

    assert expected - emitted == set()


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
