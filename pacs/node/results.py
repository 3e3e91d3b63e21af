"""Where a node study's report goes: by C-STORE to ``DICOM_RESULT_DESTINATION``, or
over DICOMweb to the PACS that sent it (``DICOMWEB_URL``), through the same write-back
state machine (retries, leases, once) as a PACS study's.

For C-STORE the node is the write-back's client: the evidence is the de-identified
headers it kept with the patient and study attributes kept beside them (a report must
be filed with its images), and both are dropped once the report is sent.
"""

from __future__ import annotations

import io

import pydicom
from pynetdicom import AE
from sqlalchemy import delete, select

from extensions import db
from pacs.client import PacsError

from .models import NodeInstance
from .settings import NodeSettings
from .start import forget_patient, patient_of

STORE_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class NodeSource:
    """The study job's image source for a node study: the images are already stored;
    ``write_back`` says whether a report has somewhere to go."""

    def __init__(self, write_back: bool):
        self.write_back = write_back

    def fetch(self, study, token: str, lease_s: float) -> bool:
        return True


class CStoreDestination:
    """The write-back client for ``DICOM_RESULT_DESTINATION``."""

    def __init__(self, settings: NodeSettings):
        self.settings, self.destination = settings, settings.destination

    def headers(self, study_uid: str) -> dict[str, pydicom.Dataset]:
        """SOP Instance UID -> the kept header with the patient and study attributes."""
        patient = patient_of(study_uid)
        headers = {}
        for sop_uid, data in db.session.execute(
                select(NodeInstance.sop_uid, NodeInstance.data)
                .where(NodeInstance.study_uid == study_uid)):
            header = pydicom.dcmread(io.BytesIO(data), force=True)
            for element in patient or ():
                header[element.tag] = element
            headers[sop_uid] = header
        return headers

    def store(self, datasets: list[pydicom.Dataset]) -> None:
        """One association, every dataset C-STOREd; ``PacsError`` unless all succeed."""
        ae = AE(ae_title=self.settings.ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.settings.timeout_s
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, STORE_SYNTAXES)
        where = f"{self.destination.ae_title}@{self.destination.host}:{self.destination.port}"
        association = ae.associate(self.destination.host, self.destination.port,
                                   ae_title=self.destination.ae_title)
        if not association.is_established:
            raise PacsError(f"The result destination {where} did not accept the association.")
        try:
            for dataset in datasets:
                status = association.send_c_store(dataset)
                code = getattr(status, "Status", None)
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success or warning
                    raise PacsError(f"The result destination {where} refused an instance "
                                    f"(status 0x{code or 0:04X}).")
        finally:
            association.release()

    def forget(self, study_uid: str) -> None:
        """The report is there: nothing of the study stays in the node."""
        forget_patient(study_uid)
        db.session.execute(delete(NodeInstance).where(NodeInstance.study_uid == study_uid))
        db.session.commit()
