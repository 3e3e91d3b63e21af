"""The PACS side of the queue: which studies fetch from the PACS, the write-back job,
and the auto-analysis poll. Registered by ``jobs.tasks`` for every app."""

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
    write_back: Callable[[str], object]  # calling it queues the write-back
    poll: Callable[[], int]  # runs now, in the caller: studies started


def register_pacs_tasks(huey, app, run_study) -> PacsTasks:
    from studies import store
    from studies.service import StudyConfig

    from . import watch
    from .analysis import PacsSource, deliver
    from .writer import SOFTWARE_NAME

    def source_for(study_id: str):
        row = store.study_row(study_id)
        if row is None or row.source != "pacs":
            return None
        return PacsSource(pacs_client(app.config), SOFTWARE_NAME)

    @huey.task(name="pacs_write_back", retries=3, retry_delay=30)
    def write_back(study_id: str) -> None:
        with app.app_context():
            outcome = deliver(pacs_client(app.config), app.extensions["inference"],
                              StudyConfig.from_mapping(app.config), study_id,
                              SOFTWARE_VERSION)
            log.info("study %s...: %s", study_id[:6], outcome)

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
    return PacsTasks(source_for=source_for, write_back=write_back, poll=poll)
