"""The jobs themselves: each runs inside the app's context, in whichever worker runs it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


@dataclass
class Tasks:
    run_study: Callable[[str], object]  # calling it queues the study
    housekeeping: Callable[[], int]  # runs now, in the caller: re-queues and purges
    pacs_poll: Callable[[], int]  # runs now: starts studies that arrived in the PACS
    forward_contact: Callable[[int, str], object]  # calling it queues a message's mail


def register_tasks(huey, app) -> Tasks:
    """Register this app's jobs on its queue (the same names in every process)."""
    from contact.jobs import register_contact_tasks
    from pacs.jobs import register_pacs_tasks
    from studies import service as studies
    from studies.service import StudyConfig

    def config() -> StudyConfig:
        return StudyConfig.from_mapping(app.config)

    @huey.task(name="run_study")
    def run_study(study_id: str) -> None:
        with app.app_context():
            source = pacs.source_for(study_id)
            write = source is not None and bool(app.config.get("PACS_WRITE_BACK"))
            if write:
                pacs.expect_write(study_id)
            # Only a prefix of the id is logged: the id is the key to the results.
            outcome = studies.run(app.extensions["inference"], config(), study_id, source)
            log.info("study %s...: %s", study_id[:6], outcome)
        if write and outcome == "done":
            pacs.write_back(study_id)  # reserved in the database, then queued

    pacs = register_pacs_tasks(huey, app, run_study)
    contact = register_contact_tasks(huey, app)

    def housekeeping() -> int:
        with app.app_context():
            stale, purged = studies.housekeeping(config())
        for study_id in stale:
            log.info("study %s... queued again (its worker stopped, or it waited too long)",
                     study_id[:6])
            run_study(study_id)
        if purged:
            log.info("purged %d studies past their retention time", purged)
        return len(stale) + contact.sweep() + pacs.sweep()

    return Tasks(run_study=run_study, housekeeping=housekeeping, pacs_poll=pacs.poll,
                 forward_contact=contact.forward)
