"""The study's answer as a DICOM Structured Report (TID 1500 in a Comprehensive SR).

A PACS keeps what it is sent next to the images, and every DICOM viewer can show an SR,
so the answer travels with the study instead of living only in this tool's database.
"""

from __future__ import annotations

import logging
import re

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from inference.predict import COVID
from studies.result import ImageResult, StudyResult

log = logging.getLogger(__name__)


class _NoSourceUIDs(logging.Filter):
    """highdicom names the source instance's UID when it copies patient and study data;
    UIDs identify a patient's images as much as a name does, so logs get a placeholder."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "from dataset" in record.msg:
            record.msg = re.sub(r'dataset "[^"]*"', "dataset <source instance>", record.msg)
        return True


if not any(isinstance(f, _NoSourceUIDs) for f in logging.getLogger("highdicom.base").filters):
    logging.getLogger("highdicom.base").addFilter(_NoSourceUIDs())

SOFTWARE_NAME = "LungScan AI"
RESEARCH_WARNING = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
SR_DESCRIPTION = "LungScan AI COVID-19 report (research use only)"
REPORT_SERIES_NUMBER = 9901  # this tool's report series in a PACS study

SCHEME = "99LUNGSCAN"  # local codes where neither DCM nor SCT has one
CODING_SCHEMES = [CodingSchemeIdentificationItem(
    designator=SCHEME, name="LungScan AI local codes", responsible_organization=SOFTWARE_NAME)]

COVID19 = Code("840539006", "SCT", "COVID-19")  # disease caused by SARS-CoV-2
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent
PROBABILITY, THRESHOLD = codes.DCM.Probability, codes.DCM.ThresholdValue
RATIO = codes.UCUM.Ratio
MEAN_PROBABILITY = Code("MEANPROB", SCHEME, "Mean COVID-19 probability over the images")
COMMENT = codes.DCM.Comment
POSITIVE_IMAGES = Code("POSIMAGES", SCHEME, "Positive images")
ANALYSED_IMAGES = Code("IMAGES", SCHEME, "Analysed images")
POSITIVE_SHARE = Code("POSSHARE", SCHEME, "Share of positive images")
LONGEST_RUN = Code("LONGESTRUN", SCHEME, "Longest run of positive consecutive slices")
QUALITATIVE = Code("C0034375", "UMLS", "Qualitative Evaluations")
VERDICT_TEXT = Code("VERDICT", SCHEME, "Study verdict")
RULE_TEXT = Code("RULE", SCHEME, "Verdict rule")
MODELS_TEXT = Code("MODELS", SCHEME, "Models")
NOT_ANALYSED = Code("NOTANALYSED", SCHEME, "Image not analysed")
STUDY_WARNING = Code("STUDYWARNING", SCHEME, "Analysis warning")
DISCLAIMER_TEXT = Code("DISCLAIMER", SCHEME, "Disclaimer")
WARNING_TEXT = Code("RESEARCHONLY", SCHEME, "Research use warning")

# Type 2 patient and study attributes that highdicom copies from the first source header
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
           "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def source_header(ds: pydicom.Dataset | None) -> pydicom.Dataset | None:
    """A copy without pixel data and with the Type 2 attributes that DICOMweb metadata
    may omit present (empty), so the new instances carry the same patient and study."""
    if ds is None:
        return None
    header = pydicom.Dataset({tag: ds[tag] for tag in ds.keys() if tag < 0x7FE00000})
    for keyword in _COPIED:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def image_title(position: int, image: ImageResult) -> str:
    """How a reader finds the image again: reading order and instance number, never the
    uploaded file name (which may carry patient data)."""
    number = image.instance_number
    return f"Image {position + 1}" + (f" (instance {number})" if number is not None else "")


def structured_report(result: StudyResult, evidence: list[pydicom.Dataset | None],
                      model_versions: dict[str, str], software_version: str,
                      series_uid: str, instance_uid: str,
                      series_number: int = REPORT_SERIES_NUMBER,
                      requested_by: str | None = None) -> pydicom.Dataset:
    """A Comprehensive SR holding a TID 1500 Measurement Report of the study's answer;
    ``requested_by`` (an account name) is recorded as a person observer beside the
    device: who asked for the analysis, not a person who checked the answer."""
    if not result.verdict:
        raise ValueError("the study has no verdict yet: only a finished study is reported")
    headers = [source_header(ds) for ds in evidence]
    present = [header for header in headers if header is not None]
    if not present:
        raise ValueError("no source instance header: the report needs the study it belongs to")
    # Only groups about an image region: viewers (OHIF) place every measurement group on
    # an image, so the study verdict is a qualitative evaluation, not a group.
    groups = _image_groups(result, headers, model_versions, software_version, instance_uid)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(requested_by),
        procedure_reported=(codes.cid100.CTUnspecifiedBodyRegion if result.modality == "ct"
                            else codes.cid100.XRUnspecifiedBodyRegion),
        imaging_measurements=groups,
        referenced_images=[h for h in present if _describable(h)] or None)
    report[0].ContentSequence.append(_evaluations(result, model_versions))
    sr = hd.sr.ComprehensiveSR(
        evidence=present, content=report[0], series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=instance_uid, instance_number=1,
        manufacturer=SOFTWARE_NAME, manufacturer_model_name=SOFTWARE_NAME,
        software_versions=software_version, series_description=SR_DESCRIPTION,
        coding_schemes=CODING_SCHEMES, is_complete=True,
        transfer_syntax_uid=ExplicitVRLittleEndian)
    # Only a prefix of the study id: the id is the key to the results.
    log.info("structured report for study %s...: %d measurement groups, %d source instances",
             result.id[:6], len(groups), len(present))
    return sr


def _observation_context(requested_by: str | None) -> hd.sr.ObservationContext:
    """The observer is this software (a device), beside the person who started the
    analysis (none for an auto-analysis)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[SOFTWARE_NAME]), name=SOFTWARE_NAME,
        manufacturer_name=SOFTWARE_NAME, model_name=SOFTWARE_NAME)
    person = None if not requested_by else hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=requested_by[:64]))
    return hd.sr.ObservationContext(
        observer_person_context=person,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _describable(header: pydicom.Dataset) -> bool:
    """Whether the header has what an Image Library entry describes (rows, spacing...);
    a thin header is still referenced as evidence and from its measurement groups."""
    try:
        hd.sr.ImageLibraryEntryDescriptors(header)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return False
    return True


def _image_groups(result: StudyResult, headers: list, model_versions: dict[str, str],
                  software_version: str, instance_uid: str) -> list:
    """One group per analysed image and model (TID 1501 names one algorithm per group),
    plus the image's combined answer when several models voted. Each is about the image
    region it was computed on, so a viewer can place it on the image and list it."""
    groups = []
    for position, image in enumerate(result.images):
        header = headers[position] if position < len(headers) else None
        title = image_title(position, image)
        for answer in image.results:
            arch = answer["architecture"]
            algorithm = hd.sr.AlgorithmIdentification(
                name=arch, version=model_versions.get(arch) or "unknown",
                manufacturer=SOFTWARE_NAME)
            measurements = [hd.sr.Measurement(PROBABILITY, answer["covid_probability"], RATIO),
                            hd.sr.Measurement(THRESHOLD, answer["threshold"], RATIO)]
            groups.append(_group(instance_uid, f"{title} {arch}", algorithm, measurements,
                                 answer["label"] == COVID, header,
                                 f"{title} {arch}: COVID-19 probability "
                                 f"{answer['covid_probability']:.2f}"))
        if len(image.results) > 1 and image.covid_probability is not None:
            algorithm = hd.sr.AlgorithmIdentification(
                name=f"{SOFTWARE_NAME} ensemble", version=software_version,
                parameters=["mean margin of: " + ", ".join(
                    r["architecture"] for r in image.results)])
            measurements = [hd.sr.Measurement(PROBABILITY, image.covid_probability, RATIO)]
            groups.append(_group(instance_uid, f"{title} combined", algorithm, measurements,
                                 bool(image.positive), header,
                                 f"{title} combined: COVID-19 probability "
                                 f"{image.covid_probability:.2f}"))
    return groups


def _sources(header: pydicom.Dataset | None) -> list | None:
    if header is None:
        return None
    return [hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=header.SOPClassUID,
        referenced_sop_instance_uid=header.SOPInstanceUID)]


def _outline(header: pydicom.Dataset | None) -> np.ndarray | None:
    """The whole image the model looked at, as a closed outline in pixel coordinates
    (column, row); None without a header that gives the image's size."""
    rows, columns = (getattr(header, "Rows", None), getattr(header, "Columns", None)
                     ) if header is not None else (None, None)
    if not rows or not columns:
        return None
    return np.array([[0.5, 0.5], [columns - 0.5, 0.5], [columns - 0.5, rows - 0.5],
                     [0.5, rows - 0.5], [0.5, 0.5]], dtype=float)


def _on_image(header: pydicom.Dataset) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(referenced_sop_class_uid=header.SOPClassUID,
                                      referenced_sop_instance_uid=header.SOPInstanceUID)


def _region(header: pydicom.Dataset | None) -> hd.sr.ImageRegion | None:
    outline = _outline(header)
    if outline is None:
        return None
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                             graphic_data=outline, source_image=_on_image(header))


def _place_number(group, header: pydicom.Dataset | None) -> None:
    """Give the probability NUM the image region as a SCOORD child (INFERRED FROM):
    viewers (OHIF) place a number by the coordinates of the number itself. highdicom
    refuses coordinates on a TID 1410 group's NUM, so the child is added afterwards."""
    outline = _outline(header)
    if outline is None:
        return
    for item in group[0].ContentSequence:
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == \
                PROBABILITY.value:
            item.ContentSequence = hd.sr.ContentSequence([hd.sr.CoordinatesForMeasurement(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline,
                source_image=_on_image(header))])
            return


def _group(instance_uid: str, title: str, algorithm, measurements: list, positive: bool,
           header: pydicom.Dataset | None, comment: str):
    """A TID 1410 group on the image region (TID 1501 without one) whose tracking UID
    follows from the report's own UID, so a report written twice is the same document."""
    common = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[instance_uid, title]), identifier=title),
        finding_type=COVID19, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            COVID19, PRESENT if positive else ABSENT)])
    region = _region(header)
    if region is not None:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=region, **common)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(source_images=_sources(header),
                                                            **common)
    _place_number(group, header)
    # The line a viewer shows as the measurement's label (OHIF: its Comment).
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=COMMENT, value=comment, relationship_type=_CONTAINS))
    return group


def _evaluations(result: StudyResult, model_versions: dict[str, str]
                 ) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations: what has no code, as text a reader sees first."""
    verdict = result.verdict
    parameters = verdict.get("rule_parameters") or {}
    texts = [(VERDICT_TEXT, f"{verdict['label']}: {verdict['positive_images']} of "
                            f"{verdict['total_images']} images positive, mean COVID "
                            f"probability {verdict['covid_probability']:.3f}"),
             (MEAN_PROBABILITY, f"{verdict['covid_probability']:.6f}"),
             (POSITIVE_IMAGES, str(verdict["positive_images"])),
             (ANALYSED_IMAGES, str(verdict["total_images"])),
             (POSITIVE_SHARE, f"{verdict['positive_share']:.6f}"),
             *([(LONGEST_RUN, str(verdict["longest_positive_run"]))]
               if result.modality == "ct" else []),
             (RULE_TEXT, verdict["rule"] + (f" ({verdict.get('rule_id', 'rule')}: " + ", ".join(
                 f"{key}={value}" for key, value in sorted(parameters.items())) + ")"
                 if parameters else "")),
             (MODELS_TEXT, "; ".join(
                 f"{m['architecture']}: {model_versions.get(m['architecture']) or 'unknown'}"
                 f" (threshold {m['threshold']:g})" for m in result.models) or "none")]
    for position, image in enumerate(result.images):
        if image.status != "done" or not image.results:
            code = image.error_code or image.status or "unknown"
            texts.append((NOT_ANALYSED, f"{image_title(position, image)}: {code}"))
    texts += [(STUDY_WARNING, warning) for warning in result.warnings]
    texts += [(DISCLAIMER_TEXT, result.disclaimer or RESEARCH_WARNING),
              (WARNING_TEXT, RESEARCH_WARNING)]
    container = hd.sr.ContainerContentItem(name=QUALITATIVE, relationship_type=_CONTAINS)
    finding = hd.sr.CodeContentItem(name=COVID19, value=PRESENT if verdict["label"] == COVID
                                    else ABSENT, relationship_type=_CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(
        [finding, *(hd.sr.TextContentItem(name=name, value=value, relationship_type=_CONTAINS)
                    for name, value in texts)])
    return container
