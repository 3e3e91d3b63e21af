"""Analyse a study where it lives: fetch its images from the PACS, write the answer back.

The analysis is an ordinary study job: ``PacsSource.fetch`` fills the study with the
PACS study's images (under the worker's claim, one image in memory at a time), the
usual runner answers them, and ``write_back`` stores a Structured Report (and, with
heatmaps, Secondary Captures) in new series of the same PACS study. Their UIDs derive
from the study id, so writing twice replaces rather than duplicates.
"""

from __future__ import annotations

import io
import logging

import pydicom
from pydicom.uid import generate_uid

from inference.onnx_cache import file_sha256
from studies import remote
from studies.errors import EmptyStudy
from studies.intake import StudyFile
from studies.ordering import order_files

from .client import PacsClient

log = logging.getLogger(__name__)

IMAGE_MODALITIES = {"ct": {"CT"}, "xray": {"CR", "DX", "DR", "RG"}}
OWN_SERIES_NUMBERS = (9901, 9902)  # the report's series and the heatmaps' series
CAPTURES_PER_STORE = 16  # Secondary Captures sent per STOW request


def wanted(instance: dict, modality: str, own_name: str) -> bool:
    """An image of the chosen modality that this tool did not write itself."""
    return (instance.get("modality") in IMAGE_MODALITIES[modality]
            and instance.get("manufacturer") != own_name)


def header_only(data: bytes) -> bytes:
    """The instance without its pixels: enough to order it, a few kilobytes."""
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


class PacsSource:
    """Fetches a PACS study's images into the study being run (``ImageSource``)."""

    def __init__(self, client: PacsClient, own_name: str):
        self.client, self.own_name = client, own_name

    def fetch(self, study, token: str, lease_s: float) -> bool:
        if remote.has_images(study.id):
            return True  # a worker taking over resumes; the images are there
        remote.clear_staged(study.id)
        listed = self.client.instances(study.pacs_study_uid)
        instances = [i for i in listed if wanted(i, study.modality, self.own_name)]
        if not instances:
            raise EmptyStudy("The PACS study holds no image of the chosen modality.")
        headers, position = [], {}
        for k, instance in enumerate(instances):
            data = self.client.retrieve(study.pacs_study_uid, instance["series_uid"],
                                        instance["sop_instance_uid"])
            if not remote.stage_file(study.id, token, lease_s, k, data):
                return False
            headers.append(StudyFile(instance["sop_instance_uid"], header_only(data)))
            position[instance["sop_instance_uid"]] = k
        ordered, warnings = order_files(headers)
        skipped = len(listed) - len(instances)
        if skipped:
            warnings.append(f"Skipped {skipped} instances of other modalities or written "
                            f"by this tool.")
        return remote.attach_staged(study.id, token, lease_s,
                                    [(position[item.file.name], item) for item in ordered],
                                    warnings)


def model_versions(inference, view: dict) -> dict[str, str]:
    """architecture -> "VGG16 sha256:<16 hex>" for the models that answered."""
    versions = {}
    for entry in inference.entries_for(view["modality"]):
        if entry.available and any(m["architecture"] == entry.architecture
                                   for m in view["models"]):
            versions[entry.architecture] = (f"{entry.display_name} "
                                            f"sha256:{file_sha256(entry.path)[:16]}")
    return versions


def evidence_for(client: PacsClient, study_uid: str, view: dict) -> list:
    """The analysed instances' headers, in the view's order (asked of the PACS again:
    patient data never waits in this tool's database)."""
    headers = client.headers(study_uid)
    missing = [image["name"] for image in view["images"] if image["name"] not in headers]
    if missing:
        raise EmptyStudy(f"{len(missing)} analysed instances are no longer in the PACS study.")
    evidence = []
    for image in view["images"]:
        header = headers[image["name"]]
        header.pop("PixelData", None)
        evidence.append(header)
    return evidence


def write_back(client: PacsClient, inference, view: dict, software_version: str) -> list[dict]:
    """Store the report (and heatmap captures) in the PACS study; what was written."""
    from .writer import structured_report

    study_id, study_uid = view["id"], view["study_uid"]
    evidence = evidence_for(client, study_uid, view)
    report = structured_report(
        view, evidence, model_versions(inference, view), software_version,
        series_uid=generate_uid(entropy_srcs=[study_id, "report-series"]),
        instance_uid=generate_uid(entropy_srcs=[study_id, "report"]))
    client.store([report])
    written = [describe(report)]
    if view.get("explain"):
        written += store_captures(client, view, evidence, software_version)
    return written


def store_captures(client: PacsClient, view: dict, evidence: list,
                   software_version: str) -> list[dict]:
    """Heatmap captures, a few per STOW request (memory holds a few, not the study)."""
    from .writer import heatmap_captures

    study_id, written, chunk = view["id"], [], []
    series_uid = generate_uid(entropy_srcs=[study_id, "heatmap-series"])

    def uid_for(index: int, architecture: str) -> str:
        return generate_uid(entropy_srcs=[study_id, "heatmap", str(index), architecture])

    def flush():
        captures = heatmap_captures(view, evidence, chunk, software_version, series_uid,
                                    uid_for)
        client.store(captures)
        written.extend(describe(c) for c in captures)
        chunk.clear()

    for index, architecture, png in remote.all_heatmaps(study_id):
        chunk.append((index, architecture, png))
        if len(chunk) == CAPTURES_PER_STORE:
            flush()
    if chunk:
        flush()
    return written


def describe(dataset) -> dict:
    return {"series_uid": str(dataset.SeriesInstanceUID),
            "sop_instance_uid": str(dataset.SOPInstanceUID),
            "sop_class_uid": str(dataset.SOPClassUID)}


def deliver(client: PacsClient, inference, config, study_id: str, software_version: str
            ) -> str:
    """Write a finished PACS study's answer back, once; what happened, for the log."""
    from studies import service as studies

    view = studies.view(config, study_id)
    if view["status"] != "done" or view.get("written"):
        return "nothing to write"
    written = write_back(client, inference, view, software_version)
    remote.set_written(study_id, written)
    return f"wrote {len(written)} instances"

