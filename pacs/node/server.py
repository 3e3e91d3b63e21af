"""The node's SCP (pynetdicom): C-ECHO and C-STORE from the AE titles allowed, each
received instance kept by ``receive``; ``flask dicom listen`` runs it.

Associations from a calling AE title not in ``DICOM_ALLOWED_CALLERS``, or to another
called AE title, are rejected when they are requested; at most
``DICOM_MAX_ASSOCIATIONS`` run at once (pynetdicom rejects the rest as busy). An
instance that cannot be read, or that would take its study past the study limits, gets
a failure status and changes nothing; the association and the others go on.
"""

from __future__ import annotations

import logging
import threading

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from sqlalchemy.exc import SQLAlchemyError

from audit import actions, trail
from extensions import db
from studies.intake import Limits

from .receive import Refused, keep
from .settings import NodeSettings

log = logging.getLogger(__name__)

# Uncompressed, deflated, RLE and the JPEG family that pydicom and pylibjpeg decode.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91"]
SUCCESS, PROCESSING_FAILURE = 0x0000, 0x0110


class Counts:
    """What each association kept, for its audit event when it ends."""

    def __init__(self):
        self.lock, self.kept = threading.Lock(), {}

    def add(self, association, study_uid: str) -> None:
        with self.lock:
            self.kept.setdefault(id(association), []).append(study_uid)

    def pop(self, association) -> tuple[int, int]:
        """(instances kept, studies they belong to)."""
        with self.lock:
            studies = self.kept.pop(id(association), [])
        return len(studies), len(set(studies))


def make_ae(settings: NodeSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = list(settings.allowed_callers)
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = settings.timeout_s
    ae.add_supported_context(Verification)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    return ae


def handlers(app, settings: NodeSettings, limits: Limits) -> list:
    counts = Counts()
    keep_patient = settings.destination is not None
    modalities = frozenset(rule.modality for rule in settings.rules)

    def on_store(event):
        calling = event.assoc.requestor.ae_title
        try:
            data = event.encoded_dataset(include_meta=True)
            with app.app_context():
                received = keep(data, calling, limits, keep_patient, modalities)
        except Refused as refused:
            log.warning("C-STORE from %s refused: %s", calling, refused.message)
            return refused.status
        except SQLAlchemyError:
            log.exception("C-STORE from %s: the database did not take it", calling)
            return PROCESSING_FAILURE
        if received.kept:
            counts.add(event.assoc, received.study_uid)
        return SUCCESS

    def on_end(event):
        instances, studies = counts.pop(event.assoc)
        if not instances:
            return
        requestor = event.assoc.requestor
        with app.app_context():
            try:
                trail.record_now(actions.DICOM_RECEIVED, trail.Actor(
                    None, f"ae:{requestor.ae_title}", None, "dicom", requestor.address),
                    instances=instances, studies=studies)
            except SQLAlchemyError:
                db.session.rollback()
                log.exception("could not record a C-STORE association in the audit trail")

    return [(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_RELEASED, on_end), (evt.EVT_ABORTED, on_end)]


def serve(app, settings: NodeSettings, limits: Limits, block: bool = True):
    """Listen on ``bind:port``; blocks unless ``block`` is False (then the server)."""
    if not settings.configured:
        raise ValueError("Set DICOM_ALLOWED_CALLERS (the calling AE titles of the "
                         "modalities and routers that may send): the node lets no one "
                         "in otherwise.")
    if not log.isEnabledFor(logging.DEBUG):  # a line per C-STORE otherwise
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = make_ae(settings)
    log.info("DICOM node %s listening on %s:%d for %s", settings.ae_title, settings.bind,
             settings.port, ", ".join(settings.allowed_callers))
    return ae.start_server((settings.bind, settings.port), block=block,
                           evt_handlers=handlers(app, settings, limits))
