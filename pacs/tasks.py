"""The PACS side of the queue: which studies fetch from the PACS (the studies' hooks),
the write-back job (reserved in the database first, see ``writeback``), its sweep, and
the auto-analysis poll. ``create_app`` registers them; the web edge finds ``PacsTasks``
in ``app.extensions["pacs_tasks"]`` to queue a person's retry."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from audit.trail import SYSTEM, Actor
from settings import settings_of
from studies import store

from . import watch, writeback
from .fetch import PacsSource
from .report_sr import SOFTWARE_NAME

log = logging.getLogger(__name__)


@dataclass
class PacsTasks:
    hooks: "PacsHooks"  # handed to the study job
    poll: Callable[[Callable[[str], object]], int]  # runs now: studies started, each run
    sweep: Callable[[], int]  # runs now: write-backs due again, queued
    queue_write: Callable[..., object]  # (study_id, actor=SYSTEM): who asked, for the trail


def actor_args(actor: Actor) -> list:
    """An actor as a job's JSON arguments carry it (``Actor(*args)`` again)."""
    return [actor.user_id, actor.name, actor.role, actor.method, actor.client]


class PacsHooks:
    """A PACS study's run fetches its images first and, when it is done, has its
    write-back reserved and queued (``StudyHooks``)."""

    def __init__(self, app, queue_write: Callable[[str], object]):
        self.app, self.queue_write = app, queue_write

    def source_for(self, study_id: str) -> PacsSource | None:
        row = store.study_row(study_id)
        if row is None or row.source != "pacs":
            return None
        settings = settings_of(self.app)
        config = settings.pacs
        source = PacsSource(config.client(), SOFTWARE_NAME, config.writes_back,
                            settings.studies.limits)
        if source.write_back:
            writeback.expect(study_id, config.write_lease_s)
        return source

    def finished(self, study_id: str, source: PacsSource, outcome: str) -> None:
        if not (source.write_back and outcome == "done"):
            return
        with self.app.app_context():
            reserved = writeback.reserve(study_id, settings_of(self.app).pacs.write_lease_s)
        if reserved:
            self.queue_write(study_id)


def register_pacs_tasks(queue, app) -> PacsTasks:
    @queue.task("pacs_write_back")
    def write_job(study_id: str, requested_by: list | None = None) -> None:
        with app.app_context():
            settings = settings_of(app)
            if not settings.pacs.writes_back:  # off since queued: the row waits
                return
            ok, outcome = writeback.attempt(
                app.extensions["inference"], settings.pacs, settings.studies, study_id,
                actor=Actor(*requested_by) if requested_by else SYSTEM)
        if ok:
            log.info("study %s...: %s", study_id[:6], outcome)

    def queue_write(study_id: str, actor: Actor = SYSTEM) -> None:
        args = (study_id,) if actor == SYSTEM else (study_id, actor_args(actor))
        queue.enqueue(f"the write-back of study {study_id[:6]}...", write_job, *args)

    def sweep() -> int:
        config = settings_of(app).pacs
        if not config.writes_back:
            return 0
        with app.app_context():
            due = writeback.reserve_due(config)
        for study_id in due:
            log.info("study %s...: write-back queued again", study_id[:6])
            queue_write(study_id)
        return len(due)

    def poll(run_study: Callable[[str], object]) -> int:
        """Start the studies that arrived; ``run_study`` queues each."""
        config = settings_of(app).pacs
        if not config.auto_rules:
            return 0
        with app.app_context():
            started = watch.poll_once(config.client(), config)
        for study_id in started:
            log.info("PACS study arrived: study %s... queued", study_id[:6])
            run_study(study_id)
        return len(started)

    tasks = PacsTasks(hooks=PacsHooks(app, queue_write), poll=poll, sweep=sweep,
                      queue_write=queue_write)
    app.extensions["pacs_tasks"] = tasks
    return tasks
