"""The PACS side of the queue: which studies fetch from the PACS, the write-back job
(reserved in the database first, see ``writes``), and the auto-analysis poll.
Registered by ``jobs.tasks`` for every app."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

SOFTWARE_VERSION = "1.0"


def pacs_client(config):
    """The configured PACS client (PacsNotConfigured without ``DICOMWEB_URL``)."""
    from .client import PacsClient, PacsNotConfigured, PacsSettings

    settings = PacsSettings.from_config(config)
    if settings is None:
        raise PacsNotConfigured("No PACS is configured: set DICOMWEB_URL.")
    return PacsClient(settings)


@dataclass
class PacsTasks:
    source_for: Callable[[str], object]  # study id -> ImageSource or None
    expect_write: Callable[[str], None]  # before a run: the write-back will be wanted
    write_back: Callable[[str], object]  # calling it reserves and queues the write-back
    poll: Callable[[], int]  # runs now, in the caller: studies started
    sweep: Callable[[], int]  # runs now: write-backs due again, queued


def register_pacs_tasks(huey, app, run_study) -> PacsTasks:
    from jobs.queue import enqueue_or_defer
    from studies import store

    from . import watch, writes
    from .analysis import PacsSource
    from .writer import SOFTWARE_NAME

    def source_for(study_id: str):
        row = store.study_row(study_id)
        if row is None or row.source != "pacs":
            return None
        return PacsSource(pacs_client(app.config), SOFTWARE_NAME)

    @huey.task(name="pacs_write_back")
    def write_job(study_id: str) -> None:
        with app.app_context():
            if not app.config.get("PACS_WRITE_BACK"):  # off since queued: the row waits
                return
            ok, outcome = writes.attempt(app, study_id, SOFTWARE_VERSION)
        if ok:
            log.info("study %s...: %s", study_id[:6], outcome)

    def queue(study_id: str) -> None:
        enqueue_or_defer(f"the write-back of study {study_id[:6]}...", write_job, study_id)

    def expect_write(study_id: str) -> None:
        with app.app_context():
            writes.expect(study_id, float(app.config["PACS_WRITE_LEASE_S"]))

    def write_back(study_id: str) -> None:
        with app.app_context():
            reserved = writes.reserve(study_id, float(app.config["PACS_WRITE_LEASE_S"]))
        if reserved:
            queue(study_id)

    def sweep() -> int:
        if not (app.config.get("PACS_WRITE_BACK") and app.config.get("DICOMWEB_URL")):
            return 0
        with app.app_context():
            due = writes.reserve_due(float(app.config["PACS_WRITE_LEASE_S"]))
        for study_id in due:
            log.info("study %s...: write-back queued again", study_id[:6])
            queue(study_id)
        return len(due)

    rules = watch.parse_auto_analyse(app.config.get("PACS_AUTO_ANALYSE"))

    def poll() -> int:
        if not rules:
            return 0
        with app.app_context():
            started = watch.poll_once(pacs_client(app.config), rules,
                                      float(app.config["PACS_STABLE_S"]),
                                      explain=bool(app.config.get("PACS_EXPLAIN")))
        for study_id in started:
            log.info("PACS study arrived: study %s... queued", study_id[:6])
            run_study(study_id)
        return len(started)

    poll.enabled = bool(rules)
    return PacsTasks(source_for=source_for, expect_write=expect_write, write_back=write_back,
                     poll=poll, sweep=sweep)
