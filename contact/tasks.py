"""Contact forwarding on the task queue: one ``forward_contact`` job per message.

The visitor's request stores the row, reserves it with a ticket and queues the job;
whichever worker takes the job sends the mail, so no request waits on SMTP. Workers'
housekeeping calls ``sweep`` to queue what still needs sending (a failed send whose
retry time came, a job lost with the broker, a worker killed mid-send, rows stored
before a restart). Claims in ``mailer`` keep each message to one send.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from .mailer import forward_one, reserve_due, smtp_configured

log = logging.getLogger(__name__)

# Above studies' default 0: a message is not kept waiting behind queued studies (it still
# waits for the job a worker is running).
PRIORITY = 10


@dataclass
class ContactTasks:
    jobs: object  # the JobQueue
    forward: Callable[[int, str], object]  # calling it queues the job
    sweep: Callable[[], int]  # runs now, in the caller: messages queued again

    def queue(self, row_id: int, ticket: str) -> bool:
        """Queue a stored message's mail and wake the embedded worker."""
        return self.jobs.enqueue("a contact message", self.forward, row_id, ticket)


def register_contact_tasks(queue, app) -> ContactTasks:
    @queue.task("forward_contact", priority=PRIORITY)
    def forward_contact(row_id: int, ticket: str) -> None:
        with app.app_context():
            if not smtp_configured():  # switched off since it was queued: the row waits
                return
            log.info("contact message %s: forwarding", row_id)
            outcome = forward_one(row_id, ticket=ticket)
        if outcome is None:
            log.info("contact message %s: already sent or held by another worker", row_id)

    def sweep() -> int:
        with app.app_context():
            due = reserve_due()
        for row_id, ticket in due:
            forward_contact(row_id, ticket)
        if due:
            log.info("%d contact messages queued to be forwarded", len(due))
        return len(due)

    return ContactTasks(jobs=queue, forward=forward_contact, sweep=sweep)
