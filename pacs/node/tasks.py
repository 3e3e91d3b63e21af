"""The node on the task queue: the loop that starts stable studies, the study job's
hooks for node studies (beside the PACS ones), and the report's write job and sweep.
``create_app`` registers them when ``DICOM_ALLOWED_CALLERS`` names a caller."""

from __future__ import annotations

import logging
from typing import Callable

from pacs import writeback
from settings import settings_of
from studies import store

from .results import CStoreDestination, NodeSource
from .start import SOURCE, forget_purged, start_stable

log = logging.getLogger(__name__)
NODE = (SOURCE,)


class NodeHooks:
    """Node studies: images already stored, the report written once done. Every other
    study is the PACS hooks' to answer (``StudyHooks``)."""

    def __init__(self, app, pacs_hooks, queue_write: Callable[[str], object]):
        self.app, self.pacs_hooks, self.queue_write = app, pacs_hooks, queue_write

    def source_for(self, study_id: str):
        row = store.study_row(study_id)
        if row is None or row.source != SOURCE:
            return self.pacs_hooks.source_for(study_id)
        settings = settings_of(self.app)
        source = NodeSource(writes_results(settings))
        if source.write_back:
            writeback.expect(study_id, settings.pacs.write_lease_s, NODE)
        return source

    def finished(self, study_id: str, source, outcome: str) -> None:
        if not isinstance(source, NodeSource):
            return self.pacs_hooks.finished(study_id, source, outcome)
        if not (source.write_back and outcome == "done"):
            return None
        with self.app.app_context():
            reserved = writeback.reserve(study_id, settings_of(self.app).pacs.write_lease_s,
                                         NODE)
        if reserved:
            self.queue_write(study_id)
        return None


def writes_results(settings) -> bool:
    """A C-STORE destination, or a PACS to write to over DICOMweb."""
    return settings.node.destination is not None or settings.pacs.writes_back


def register_node_tasks(queue, app, pacs_hooks, run_study: Callable[[str], object]):
    """The node's jobs and loops; the hooks the study job uses (the PACS hooks alone
    when no node is configured)."""
    node = settings_of(app).node
    if not node.configured:
        return pacs_hooks

    @queue.task("node_write_back")
    def write_job(study_id: str) -> None:
        with app.app_context():
            settings = settings_of(app)
            destination = (CStoreDestination(settings.node)
                           if settings.node.destination is not None else None)
            ok, outcome = writeback.attempt(app.extensions["inference"], settings.pacs,
                                            settings.studies, study_id, client=destination)
            if ok and destination is not None:
                destination.forget(store.study_row(study_id).pacs_study_uid)
        if ok:
            log.info("study %s...: %s", study_id[:6], outcome)

    def queue_write(study_id: str) -> None:
        queue.enqueue(f"the report of study {study_id[:6]}...", write_job, study_id)

    def sweep() -> int:
        """Start stable studies; queue again the reports whose time came."""
        with app.app_context():
            forget_purged()
            started = start_stable(settings_of(app).node)
            due = (writeback.reserve_due(settings_of(app).pacs, sources=NODE)
                   if writes_results(settings_of(app)) else [])
        for study_id in started:
            log.info("DICOM node: study %s... complete, queued", study_id[:6])
            run_study(study_id)
        for study_id in due:
            queue_write(study_id)
        return len(started) + len(due)

    queue.every("dicom-node", max(0.5, min(node.stable_s / 2, 5.0)), sweep)
    return NodeHooks(app, pacs_hooks, queue_write)
