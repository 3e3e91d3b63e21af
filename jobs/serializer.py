"""Queue messages as JSON instead of Huey's default pickle.

Unpickling runs code named by the data, so with pickle anyone who can write to the
broker (a Redis reachable on the network, a queue file) could run code in every
worker. JSON can only describe a job: a task name this app registered and plain
arguments (study ids, row ids, tickets). Anything else is refused before it runs.
"""

from __future__ import annotations

import json
from datetime import datetime

from huey.registry import Message
from huey.serializer import Serializer

FORMAT = "lungscan-job-1"


class UnreadableMessage(ValueError):
    """Bytes in the queue that are not a job this app wrote (pickle, garbage)."""


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


class JsonSerializer(Serializer):
    """Huey's serializer with JSON for the pickle step (compression stays Huey's)."""

    def _serialize(self, data) -> bytes:
        if not isinstance(data, Message):
            raise TypeError(f"only job messages are queued, not {type(data).__name__}")
        if data.on_complete is not None or data.on_error is not None:
            raise TypeError("pipelines are not queued as JSON")
        body = {"format": FORMAT, "id": data.id, "name": data.name, "eta": _time(data.eta),
                "retries": data.retries, "retry_delay": data.retry_delay,
                "priority": data.priority, "args": list(data.args or ()),
                "kwargs": dict(data.kwargs or {}), "expires": data.expires,
                "expires_resolved": _time(data.expires_resolved)}
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    def _deserialize(self, data: bytes) -> Message:
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or body.get("format") != FORMAT:
                raise UnreadableMessage("not a job message of this app")
            return Message(body["id"], body["name"], _parse_time(body["eta"]),
                           body["retries"], body["retry_delay"], body["priority"],
                           tuple(body["args"]), body["kwargs"], None, None,
                           body["expires"], _parse_time(body["expires_resolved"]))
        except (ValueError, KeyError, TypeError) as exc:  # json and unicode errors too
            raise UnreadableMessage(f"the queue held an unreadable message "
                                    f"({type(exc).__name__})") from None
