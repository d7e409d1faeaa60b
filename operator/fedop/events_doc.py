"""Generate ``docs/events.md``, the table of reasons a person looks up, from ``fedop.catalogue``.

The catalogue is the source; the page is its rendering, committed so that it reads on the
web, and a unit test fails when it is stale.

::

    python -m fedop.events_doc            # write docs/events.md
    python -m fedop.events_doc --check    # exit 1 when docs/events.md is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedop.catalogue import CATALOGUE, NOTHING, Entry

OUTPUT = Path("docs/events.md")
DOC_FIELDS = {
    "job": "JOB",
    "client": "CLIENT",
    "child": "JOB-CLIENT",
    "aggregator": "JOB-aggregator",
    "left": "N",
}
"""How an action's ``{fields}`` read in the docs."""

HEADER = """# Events and conditions

<!-- Generated from operator/fedop/catalogue.py by `python -m fedop.events_doc`: edit the
catalogue, not this file (a unit test fails when the two differ). -->

Every reason the operator gives, as a Kubernetes Event (`kubectl describe fj NAME`,
`kubectl get events --field-selector involvedObject.name=NAME`) or as the reason of a status
condition (`kubectl get fj NAME -o jsonpath='{.status.conditions}'`). Reasons are stable:
match on them in scripts and alerts. Each message says what happened (naming the client,
round, object or field) and ends with what to do; for news that needs no one the action is
left out of the message. Text that comes from the store or from pods (rejection details,
record keys, failure messages) is shown on one line, with control characters escaped, and
cut to fit an Event's 1 KiB; `round.json` in the store keeps a rejection's full detail.

In the actions, JOB is the FederatedJob's name, CLIENT a client's (`spec.clients[].name`),
JOB-CLIENT the client's Job and JOB-aggregator the aggregator's.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _action(text: str) -> str:
    return _cell(text.format(**DOC_FIELDS))


def _where(entry: Entry) -> tuple[str, str]:
    event = entry.event or "-"
    conditions = ", ".join(entry.conditions) or "-"
    return event, conditions


def render() -> str:
    """The page's text."""
    lines = [
        HEADER,
        "## Reasons",
        "",
        "| Reason | Event | Condition | When | What to do |",
        "|---|---|---|---|---|",
    ]
    for reason, entry in CATALOGUE.items():
        event, conditions = _where(entry)
        action = _action(entry.action)
        if entry.causes:
            action += " (By cause: see below.)"
        lines.append(f"| `{reason}` | {event} | {conditions} | {_cell(entry.when)} | {action} |")
    lines += [
        "",
        "## What to do, by cause",
        "",
        "Where one action cannot fit every cause of a reason, the message ends with the one "
        "for its cause. For `UpdateRejected` the cause is the rejection's code "
        "([design.md](design.md#rejected-updates) says what each code means).",
        "",
        "| Reason | Cause | What to do |",
        "|---|---|---|",
    ]
    for reason, entry in CATALOGUE.items():
        for cause, action in entry.causes.items():
            lines.append(f"| `{reason}` | `{cause}` | {_action(action)} |")
    lines += ["", f"`{NOTHING}` means the message carries no action.", ""]
    return "\n".join(lines)


def repo_root() -> Path:
    """The repository holding this source file (operator/fedop/events_doc.py)."""
    return Path(__file__).resolve().parents[2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedop.events_doc", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    parser.add_argument("--root", type=Path, default=None, help="repository root")
    args = parser.parse_args(argv)
    path = (args.root or repo_root()) / OUTPUT
    text = render()
    if args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{OUTPUT} is stale: run `make events-doc` and commit it", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
