"""Studies on the task queue: the ``run_study`` job and the studies' housekeeping.

A study whose images live elsewhere (a PACS) is run with an ``ImageSource`` and a
follow-up, both from ``StudyHooks``, which ``create_app`` hands in: studies know no
PACS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from settings import settings_of

from . import service
from .runner import ImageSource

log = logging.getLogger(__name__)


class StudyHooks(Protocol):
    def source_for(self, study_id: str) -> ImageSource | None:
        """Where the study's images come from, when they were not uploaded; inside the
        app context, before it runs."""

    def finished(self, study_id: str, source: ImageSource, outcome: str) -> None:
        """After a study with a source ran (outside the app context)."""


@dataclass
class StudyTasks:
    run: Callable[[str], object]  # calling it queues the study (without a wake-up)
    queue: Callable[[str], bool]  # queue it and wake the embedded worker
    housekeeping: Callable[[], int]  # runs now, in the caller: re-queues and purges


def register_study_tasks(queue, app, hooks: StudyHooks | None = None) -> StudyTasks:
    @queue.task("run_study")
    def run_study(study_id: str) -> None:
        with app.app_context():
            source = hooks.source_for(study_id) if hooks else None
            # Only a prefix of the id is logged: the id is the key to the results.
            outcome = service.run(app.extensions["inference"], settings_of(app).studies,
                                  study_id, source)
            log.info("study %s...: %s", study_id[:6], outcome)
        if source is not None:
            hooks.finished(study_id, source, outcome)

    def housekeeping() -> int:
        with app.app_context():
            stale, purged = service.housekeeping(settings_of(app).studies)
        for study_id in stale:
            log.info("study %s... queued again (its worker stopped, or it waited too long)",
                     study_id[:6])
            run_study(study_id)
        if purged:
            log.info("purged %d studies past their retention time", purged)
        return len(stale)

    def queue_study(study_id: str) -> bool:
        return queue.enqueue("a study", run_study, study_id)

    return StudyTasks(run=run_study, queue=queue_study, housekeeping=housekeeping)
