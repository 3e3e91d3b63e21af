"""Heatmaps as objects a viewer lays over the source images (IHE AI Results): a Parametric
Map of the Grad-CAM values, or a fractional Segmentation of them.

Unlike a Secondary Capture, these carry numbers in the source images' geometry: one
frame per analysed image, the source referenced per frame, positions and orientation
from the source headers, so a viewer can fuse them with the slices. One object per
model and source series (a few dozen frames at most, so memory holds one object, not a
study), in a series of its own beside the report's and the captures'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from extensions import db
from inference.explain import map_from_bytes
from studies.models import StudyHeatmap
from studies.result import StudyResult

from .report_sr import COVID19, RESEARCH_WARNING, SOFTWARE_NAME, source_header

log = logging.getLogger(__name__)

PMAP_SERIES_NUMBER = 9903  # this tool's Parametric Map series in a PACS study
SEG_SERIES_NUMBER = 9904  # this tool's Segmentation series in a PACS study
OVERLAY_FORMATS = ("pmap", "seg")  # PACS_HEATMAP_FORMAT values written by this module
FRAMES_PER_OBJECT = 64  # a longer series is split over several instances
LUT_LABEL = "COVID-19 GradCAM"  # SH: 16 characters at most
CONTENT_LABEL = "COVID19_GRADCAM"  # CS: capitals, digits and underscores
SEGMENT_LABEL = "COVID-19 attention"
DESCRIPTIONS = {"pmap": "LungScan AI COVID-19 heatmap values (research use only)",
                "seg": "LungScan AI COVID-19 attention (research use only)"}
ATTENTION_CATEGORY = codes.cid7150.MorphologicallyAbnormalStructure
LUNG = codes.SCT.Lung
RADIOGRAPHS = ("CR", "DX")  # the analysed modalities that may lack a frame of reference


@dataclass(frozen=True)
class Heatmap:
    """One model's Grad-CAM map (0..1, any size) of the image at ``index``."""

    index: int
    architecture: str
    cam: np.ndarray


def values_at(cam: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The map stretched over the source image, as the PNG overlay stretches it (the
    model saw the image resized to a square): bilinear, clipped to 0..1."""
    import cv2

    resized = cv2.resize(np.asarray(cam, dtype=np.float32), (columns, rows),
                         interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def unplaceable(header: pydicom.Dataset, kind: str) -> str | None:
    """Why an overlay cannot sit on this source image, or None when it can."""
    if "FrameOfReferenceUID" in header:
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient",
                               "PixelSpacing") if k not in header]
        return f"the source lacks {', '.join(missing)}" if missing else None
    if header.get("Modality") not in RADIOGRAPHS:  # a CT's IOD requires one
        return "the source has no frame of reference"
    if kind == "pmap":  # highdicom builds a Parametric Map only in a frame of reference
        return "a Parametric Map needs a source with a frame of reference"
    return None


def groups(result: StudyResult, headers: list, heatmaps: list[Heatmap], kind: str
           ) -> Iterator[tuple[str, list[tuple[pydicom.Dataset, Heatmap]]]]:
    """(architecture, [(source header, heatmap)]) per model, source series and image
    size, in the study's model order and reading order, at most FRAMES_PER_OBJECT
    each; images without a frame of reference stand alone (a frame each)."""
    positions = {image.index: position for position, image in enumerate(result.images)}
    archs = [m["architecture"] for m in result.models]
    by_key: dict[tuple, list] = {}
    skipped: dict[str, int] = {}
    for heatmap in sorted(heatmaps, key=lambda h: (
            archs.index(h.architecture) if h.architecture in archs else len(archs),
            h.architecture, positions.get(h.index, -1))):
        if heatmap.index not in positions:
            raise ValueError(f"heatmap for image {heatmap.index}, which the study does not have")
        header = headers[positions[heatmap.index]]
        reason = "no source header" if header is None else unplaceable(header, kind)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        frame_of_reference = header.get("FrameOfReferenceUID") or header.SOPInstanceUID
        key = (heatmap.architecture, header.SeriesInstanceUID, frame_of_reference,
               int(header.Rows), int(header.Columns))
        by_key.setdefault(key, []).append((header, heatmap))
    for reason, count in skipped.items():
        log.warning("study %s...: %d heatmaps not written as %s: %s", result.id[:6], count,
                    kind, reason)
    for key, members in by_key.items():
        for start in range(0, len(members), FRAMES_PER_OBJECT):
            yield key[0], members[start:start + FRAMES_PER_OBJECT]


def heatmap_overlays(kind: str, result: StudyResult, evidence: list[pydicom.Dataset | None],
                     heatmaps: list[Heatmap], model_versions: dict[str, str],
                     software_version: str, series_uid: str,
                     uid_for: Callable[[str, int], str]) -> Iterator[pydicom.Dataset]:
    """The Parametric Maps (``pmap``) or Segmentations (``seg``) of a study's heatmaps,
    one at a time; ``uid_for(architecture, n)`` names the n-th object of a model."""
    build = {"pmap": parametric_map, "seg": segmentation}[kind]
    headers = [source_header(ds) for ds in evidence]
    counts: dict[str, int] = {}
    for number, (arch, members) in enumerate(groups(result, headers, heatmaps, kind), 1):
        sources = [header for header, _ in members]
        rows, columns = int(sources[0].Rows), int(sources[0].Columns)
        frames = np.stack([values_at(h.cam, rows, columns) for _, h in members])
        counts[arch] = counts.get(arch, 0) + 1
        overlay = build(sources, frames, arch, model_versions.get(arch) or "unknown",
                        software_version, series_uid, uid_for(arch, counts[arch]), number)
        _describe(overlay, kind, arch, sources[0])
        yield overlay
    log.info("heatmap %s objects for study %s...: %d", kind, result.id[:6], sum(counts.values()))


def parametric_map(sources: list[pydicom.Dataset], frames: np.ndarray, arch: str,
                   model_version: str, software_version: str, series_uid: str,
                   sop_uid: str, number: int) -> hd.pm.ParametricMap:
    """Float32 values 0..1, one frame per source image, mapped one to one (no unit)."""
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL, lut_explanation=f"Grad-CAM of {arch}, 0 none to 1 the peak"[:64],
        unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    return hd.pm.ParametricMap(
        source_images=sources, pixel_array=frames, series_instance_uid=series_uid,
        series_number=PMAP_SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=number,
        manufacturer=SOFTWARE_NAME, manufacturer_model_name=f"{SOFTWARE_NAME} {arch}"[:64],
        software_versions=[software_version, model_version[:64]],
        device_serial_number=software_version, contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5,
                                                         window_width=1.0)],
        content_label=CONTENT_LABEL, content_description=_content(arch),
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        series_description=DESCRIPTIONS["pmap"], transfer_syntax_uid=ExplicitVRLittleEndian)


def segmentation(sources: list[pydicom.Dataset], frames: np.ndarray, arch: str,
                 model_version: str, software_version: str, series_uid: str,
                 sop_uid: str, number: int) -> hd.seg.Segmentation:
    """One fractional segment (the attention, 0..1 in 255 steps), by the model."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=arch, version=model_version[:64], family=codes.cid7162.ArtificialIntelligence,
        source=SOFTWARE_NAME)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=ATTENTION_CATEGORY, segmented_property_type=COVID19,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[LUNG])
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[segment], series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=number,
        manufacturer=SOFTWARE_NAME, manufacturer_model_name=f"{SOFTWARE_NAME} {arch}"[:64],
        software_versions=[software_version, model_version[:64]],
        device_serial_number=software_version, max_fractional_value=255,
        content_label=CONTENT_LABEL, content_description=_content(arch),
        series_description=DESCRIPTIONS["seg"], omit_empty_frames=False,
        transfer_syntax_uid=ExplicitVRLittleEndian)


def _content(arch: str) -> str:
    return f"Grad-CAM {arch}: {RESEARCH_WARNING}"[:64]


def _describe(overlay: pydicom.Dataset, kind: str, arch: str, source: pydicom.Dataset) -> None:
    """What highdicom leaves to the caller: the warning in words, the body part (chest is
    unpaired: no laterality) and, without a frame of reference, the orientation."""
    overlay.BodyPartExamined = "CHEST"
    overlay.ImageComments = f"{RESEARCH_WARNING}. Grad-CAM heatmap of model {arch}."
    overlay.DerivationDescription = (f"Grad-CAM of model {arch} for COVID-19, scaled to its "
                                     f"peak and resampled to the source image")
    if "FrameOfReferenceUID" not in overlay and "PatientOrientation" not in overlay:
        overlay.PatientOrientation = source.get("PatientOrientation")


def stored_heatmaps(study_id: str) -> tuple[list[Heatmap], int]:
    """The study's stored maps, and how many heatmaps were stored without one (before
    maps were kept: those have only their picture)."""
    rows = db.session.execute(select(StudyHeatmap.index, StudyHeatmap.architecture,
                                     StudyHeatmap.cam)
                              .where(StudyHeatmap.study_id == study_id)
                              .order_by(StudyHeatmap.index, StudyHeatmap.architecture))
    heatmaps, without = [], 0
    for index, architecture, cam in rows:
        if cam is None:
            without += 1
        else:
            heatmaps.append(Heatmap(index, architecture, map_from_bytes(cam)))
    return heatmaps, without


def store_overlays(client, kind: str, result: StudyResult, evidence: list,
                   model_versions: dict[str, str], software_version: str
                   ) -> Iterator[pydicom.Dataset]:
    """Build and store the study's overlays one per STOW request (each may hold dozens
    of frames); yields each object once the PACS has it."""
    heatmaps, without = stored_heatmaps(result.id)
    if without:
        log.warning("study %s...: %d heatmaps have no stored map, not written as %s",
                    result.id[:6], without, kind)
    series_uid = generate_uid(entropy_srcs=[result.id, f"heatmap-{kind}-series"])

    def uid_for(architecture: str, number: int) -> str:
        return generate_uid(entropy_srcs=[result.id, f"heatmap-{kind}", architecture,
                                          str(number)])

    for overlay in heatmap_overlays(kind, result, evidence, heatmaps, model_versions,
                                    software_version, series_uid, uid_for):
        client.store([overlay])
        yield overlay
