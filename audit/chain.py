"""The hash chain: what each event's hash covers, and the check that finds a break."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from .models import GENESIS, AuditEvent

CHAINED = ("seq", "at", "actor_id", "actor_name", "actor_role", "actor_method", "client",
           "action", "target", "study", "outcome", "prev_hash")


def content(event: AuditEvent) -> bytes:
    """The event's fields in one canonical form (sorted keys, ISO time)."""
    values = {name: getattr(event, name) for name in CHAINED}
    values["at"] = event.at.isoformat(timespec="microseconds")
    return json.dumps(values, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def digest(event: AuditEvent) -> str:
    return hashlib.sha256(content(event)).hexdigest()


def link(events: Iterable[AuditEvent], seq: int, prev_hash: str) -> tuple[int, str]:
    """Number and hash the events after (``seq``, ``prev_hash``); the new head."""
    for event in events:
        seq += 1
        event.seq, event.prev_hash = seq, prev_hash
        event.hash = prev_hash = digest(event)
    return seq, prev_hash


@dataclass
class Verdict:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(events: Iterable[AuditEvent], head_seq: int, head_hash: str) -> Verdict:
    """Walk the events in order; each problem names the row where the chain breaks."""
    verdict = Verdict()
    seq, prev = 0, GENESIS
    for event in events:
        verdict.checked += 1
        if event.seq != seq + 1:
            verdict.problems.append(
                f"row {event.seq}: expected row {seq + 1} here (rows removed or reordered)")
        elif event.prev_hash != prev:
            verdict.problems.append(f"row {event.seq}: does not follow row {seq} "
                                    "(a row before it was edited, removed or reordered)")
        if digest(event) != event.hash:
            verdict.problems.append(f"row {event.seq}: its content was edited")
        seq, prev = event.seq, event.hash
    if (seq, prev) != (head_seq, head_hash):
        verdict.problems.append(f"the trail ends at row {seq} but its head says row "
                                f"{head_seq}: rows at the end were removed or the head "
                                "was changed")
    return verdict
