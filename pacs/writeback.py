"""The write-back into the PACS: what is written, and the state machine that drives it
from the database rather than from the queue.

A PACS study is marked when it starts running, and reserved again once it finished
(``write_after`` = now + a lease) before its ``pacs_write_back`` job is queued. The job
writes a Structured Report (and, with heatmaps, the objects PACS_HEATMAP_FORMAT names:
Parametric Maps, Segmentations or Secondary Captures) into new series of the same PACS
study and records the outcome: ``written``, or one more failed try, the
failure in words and the time of the next try (doubling back-off). Workers'
housekeeping (``reserve_due``) queues again every study whose time came (a failure to
retry, a lost job, a worker that died mid-write), each reserved by one conditional
UPDATE so that among several workers only one queues it. Writing twice is harmless:
the instances' UIDs derive from the study id. A study finished while write-back was off
(``write_after`` null) is never written automatically.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from pydicom.uid import generate_uid
from sqlalchemy import select, update

from audit import actions, trail
from audit.trail import Actor
from auth.models import User
from extensions import db
from inference.conversion import file_sha256
from inference.errors import ServiceError
from jobs.lease import won
from jobs.retry import doubling_delay
from settings import DEFAULT_HEATMAP_FORMAT, PacsConfig, StudySettings
from studies import service as studies
from studies.errors import EmptyStudy
from studies.models import DONE, QUEUED, RUNNING, Study, StudyHeatmap, utcnow_naive
from studies.result import StudyResult

from .captures import heatmap_captures
from .client import PacsClient
from .overlays import OVERLAY_FORMATS, store_overlays
from .report_sr import structured_report

log = logging.getLogger(__name__)

SOFTWARE_VERSION = "1.0"
CAPTURES_PER_STORE = 16  # Secondary Captures sent per STOW request


PACS = ("pacs",)  # the sources whose studies this module's callers write back


def wanted(sources=PACS):
    """A finished study (of these sources: PACS studies by default) not written yet."""
    return (Study.source.in_(sources), Study.status == DONE, Study.written.is_(None))


def due(now, max_attempts: int, sources=PACS):
    """Wanted, its time came, and automatic tries left."""
    return (*wanted(sources), Study.write_after.is_not(None), Study.write_after < now,
            Study.write_attempts < max_attempts)


def expect(study_id: str, lease_s: float, sources=PACS) -> None:
    """Before a PACS study runs: its write-back is wanted. A worker that stops between
    finishing the study and queueing the write leaves it to housekeeping."""
    db.session.execute(
        update(Study).where(Study.id == study_id, Study.source.in_(sources),
                            Study.status.in_((QUEUED, RUNNING)), Study.written.is_(None))
        .values(write_after=utcnow_naive() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False))
    db.session.commit()


def reserve(study_id: str, lease_s: float, sources=PACS) -> bool:
    """Mark a study that just finished for write-back, held for the job about to be
    queued; False when there is nothing to write."""
    return won(update(Study).where(Study.id == study_id, *wanted(sources))
               .values(write_after=utcnow_naive() + timedelta(seconds=lease_s)))


def due_ids(config: PacsConfig, limit: int = 100, sources=PACS) -> list[str]:
    return list(db.session.scalars(
        select(Study.id).where(*due(utcnow_naive(), config.write_max_attempts, sources))
        .order_by(Study.write_after).limit(limit)))


def take(study_id: str, config: PacsConfig, sources=PACS) -> bool:
    """Reserve one due study for a job; True only for the caller whose UPDATE won."""
    now = utcnow_naive()
    return won(update(Study).where(Study.id == study_id,
                                   *due(now, config.write_max_attempts, sources))
               .values(write_after=now + timedelta(seconds=config.write_lease_s)))


def reserve_due(config: PacsConfig, limit: int = 100, sources=PACS) -> list[str]:
    """The due studies this caller reserved (each needs a job queued)."""
    return [study_id for study_id in due_ids(config, limit, sources)
            if take(study_id, config, sources)]


def restart(study_id: str, lease_s: float, sources=PACS) -> bool:
    """A person's retry of a write that failed: a new round of automatic tries, held
    for the job about to be queued (a second retry meanwhile finds nothing to take).
    False when there is no failed write to retry; the failures stay in the trail."""
    return won(update(Study).where(Study.id == study_id, *wanted(sources),
                                   Study.write_attempts > 0)
               .values(write_attempts=0, write_error=None,
                       write_after=utcnow_naive() + timedelta(seconds=lease_s)))


def record_failure(study_id: str, message: str, config: PacsConfig,
                   actor: Actor = trail.SYSTEM) -> tuple[int, float]:
    """One more failed try, its message and the next try's time; (tries, delay)."""
    db.session.rollback()  # whatever the failure left open
    attempts = db.session.scalar(select(Study.write_attempts).where(Study.id == study_id))
    if attempts is None:
        return 0, 0.0  # the study was deleted or purged meanwhile
    delay = doubling_delay(config.write_retry_s, attempts + 1, config.write_retry_max_s)
    trail.record(actions.WRITE_BACK_FAILED, actor, trail.FAILURE, study_id=study_id,
                 attempt=attempts + 1)
    db.session.execute(
        update(Study).where(Study.id == study_id)
        .values(write_attempts=Study.write_attempts + 1, write_error=message[:300],
                write_after=utcnow_naive() + timedelta(seconds=delay))
        .execution_options(synchronize_session=False))
    db.session.commit()
    return attempts + 1, delay


def attempt(inference, config: PacsConfig, study_config: StudySettings,
            study_id: str, client=None, actor: Actor = trail.SYSTEM) -> tuple[bool, str]:
    """Write the study back now, in the caller, and record the outcome: (ok, what
    happened). ``client``: where to (the PACS by default); ``actor``: who asked for
    this try, as the trail records it. Run inside an app context."""
    try:
        outcome = deliver(client or config.client(), inference, study_config, study_id,
                          config.heatmap_format, actor)
    except ServiceError as exc:  # PACS errors name only scheme://host:port
        message = exc.message
    except Exception as exc:  # noqa: BLE001 - its text could quote a response: type only
        message = f"The write-back failed ({type(exc).__name__})."
    else:
        return True, outcome
    attempts, delay = record_failure(study_id, message, config, actor)
    if attempts >= config.write_max_attempts:
        log.warning("study %s...: write-back failed %d times, no more automatic tries "
                    "(flask pacs write-back): %s", study_id[:6], attempts, message)
    elif attempts:
        log.warning("study %s...: write-back failed (try %d), next in %.0f s: %s",
                    study_id[:6], attempts, delay, message)
    return False, message


def deliver(client: PacsClient, inference, study_config: StudySettings, study_id: str,
            heatmap_format: str = DEFAULT_HEATMAP_FORMAT, actor: Actor = trail.SYSTEM) -> str:
    """Write a finished PACS study's answer back, once; what happened, for the log."""
    result = studies.result(study_config, study_id)
    if result.status != "done" or result.written:
        return "nothing to write"
    written = write_back(client, inference, result, heatmap_format)
    set_written(study_id, written, actor)
    return f"wrote {len(written)} instances"


def requester(owner_id: int | None) -> str | None:
    """The account name of whoever started the analysis (None: auto-analysis)."""
    user = db.session.get(User, owner_id) if owner_id is not None else None
    return user.name if user is not None else None


def write_back(client: PacsClient, inference, result: StudyResult,
               heatmap_format: str = DEFAULT_HEATMAP_FORMAT) -> list[dict]:
    """Store the report (and the heatmaps, in ``heatmap_format``: PACS_HEATMAP_FORMAT) in
    the PACS study; what was written."""
    study_id, study_uid = result.id, result.study_uid
    evidence = evidence_for(client, study_uid, result)
    versions = model_versions(inference, result)
    report = structured_report(
        result, evidence, versions, SOFTWARE_VERSION,
        series_uid=generate_uid(entropy_srcs=[study_id, "report-series"]),
        instance_uid=generate_uid(entropy_srcs=[study_id, "report"]),
        requested_by=requester(result.owner_id))
    client.store([report])
    written = [describe(report)]
    if result.explain and heatmap_format == "sc":
        written += store_captures(client, result, evidence)
    elif result.explain and heatmap_format in OVERLAY_FORMATS:
        written += [describe(overlay) for overlay in store_overlays(
            client, heatmap_format, result, evidence, versions, SOFTWARE_VERSION)]
    return written


def model_versions(inference, result: StudyResult) -> dict[str, str]:
    """architecture -> "VGG16 sha256:<16 hex>" for the models that answered."""
    versions = {}
    for entry in inference.entries_for(result.modality):
        if entry.available and any(m["architecture"] == entry.architecture
                                   for m in result.models):
            versions[entry.architecture] = (f"{entry.display_name} "
                                            f"sha256:{file_sha256(entry.path)[:16]}")
    return versions


def evidence_for(client: PacsClient, study_uid: str, result: StudyResult) -> list:
    """The analysed instances' headers, in reading order (asked of the PACS again:
    patient data never waits in this tool's database)."""
    headers = client.headers(study_uid)
    missing = [image.name for image in result.images if image.name not in headers]
    if missing:
        raise EmptyStudy(f"{len(missing)} analysed instances are no longer in the PACS study.")
    evidence = []
    for image in result.images:
        header = headers[image.name]
        header.pop("PixelData", None)
        evidence.append(header)
    return evidence


def store_captures(client: PacsClient, result: StudyResult, evidence: list) -> list[dict]:
    """Heatmap captures, a few per STOW request (memory holds a few, not the study)."""
    study_id, written, chunk = result.id, [], []
    series_uid = generate_uid(entropy_srcs=[study_id, "heatmap-series"])

    def uid_for(index: int, architecture: str) -> str:
        return generate_uid(entropy_srcs=[study_id, "heatmap", str(index), architecture])

    def flush():
        captures = heatmap_captures(result, evidence, chunk, SOFTWARE_VERSION, series_uid,
                                    uid_for)
        client.store(captures)
        written.extend(describe(c) for c in captures)
        chunk.clear()

    for index, architecture, png in all_heatmaps(study_id):
        chunk.append((index, architecture, png))
        if len(chunk) == CAPTURES_PER_STORE:
            flush()
    if chunk:
        flush()
    return written


def all_heatmaps(study_id: str):
    """(index, architecture, PNG) of every stored heatmap, one row at a time."""
    return db.session.execute(select(StudyHeatmap.index, StudyHeatmap.architecture,
                                     StudyHeatmap.png)
                              .where(StudyHeatmap.study_id == study_id)
                              .order_by(StudyHeatmap.index, StudyHeatmap.architecture))


def describe(dataset) -> dict:
    return {"series_uid": str(dataset.SeriesInstanceUID),
            "sop_instance_uid": str(dataset.SOPInstanceUID),
            "sop_class_uid": str(dataset.SOPClassUID)}


def set_written(study_id: str, written: list[dict], actor: Actor = trail.SYSTEM) -> None:
    """Written back: no further try is wanted, and the last failure is history."""
    trail.record(actions.WRITE_BACK_DONE, actor, study_id=study_id,
                 instances=len(written))
    db.session.execute(update(Study).where(Study.id == study_id)
                       .values(written=written, write_after=None, write_error=None))
    db.session.commit()
