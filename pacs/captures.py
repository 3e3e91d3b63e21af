"""Heatmap overlays as DICOM Secondary Capture images, the warning burned into the pixels.

A viewer may hide or drop any attribute, but not the pixels: the research-use warning and
the model's answer are drawn on bands added above and below the heatmap, so no viewer
shows the picture without them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import ExplicitVRLittleEndian

from studies.result import ImageResult, StudyResult

from .report_sr import RESEARCH_WARNING, SOFTWARE_NAME, image_title, source_header

log = logging.getLogger(__name__)

SC_DESCRIPTION = "LungScan AI heatmaps (research use only)"
HEATMAP_SERIES_NUMBER = 9902  # this tool's heatmap series in a PACS study
MIN_WIDTH = 512  # narrower heatmaps are enlarged so the captions stay legible
MARGIN = 6
BAND_COLOUR, TEXT_COLOUR = (0, 0, 0), (255, 255, 0)
# patient direction of +x, +y, +z (DICOM's LPS patient coordinates)
_DIRECTIONS = (("L", "R"), ("P", "A"), ("H", "F"))


def heatmap_captures(result: StudyResult, evidence: list[pydicom.Dataset | None],
                     heatmaps: list[tuple[int, str, bytes]], software_version: str,
                     series_uid: str, uid_for: Callable[[int, str], str],
                     series_number: int = HEATMAP_SERIES_NUMBER) -> list[pydicom.Dataset]:
    """One RGB Secondary Capture per (image index, architecture, PNG) in a new series of
    the source study, each referencing the image it explains."""
    headers = [source_header(ds) for ds in evidence]
    any_header = next((h for h in headers if h is not None), None)
    if any_header is None:
        raise ValueError("no source instance header: the captures need the study they belong to")
    positions = {image.index: position for position, image in enumerate(result.images)}
    captures = []
    for index, arch, png in heatmaps:
        if index not in positions:
            raise ValueError(f"heatmap for image {index}, which the study does not have")
        position = positions[index]
        image = result.images[position]
        header = headers[position] if position < len(headers) else None
        pixels = burn_in(png, [RESEARCH_WARNING, caption(position, image, arch)])
        captures.append(_capture(pixels, header or any_header, header is not None,
                                 software_version, series_uid, series_number,
                                 uid_for(index, arch), instance_number(result, position, arch),
                                 arch))
    log.info("heatmap captures for study %s...: %d images", result.id[:6], len(captures))
    return captures


def instance_number(result: StudyResult, position: int, arch: str) -> int:
    """Reading order, then the study's model order: the same number for the same capture
    however the captures are batched."""
    archs = [m["architecture"] for m in result.models]
    archs += [arch] if arch not in archs else []
    return position * len(archs) + archs.index(arch) + 1


def caption(position: int, image: ImageResult, arch: str) -> str:
    """The model's answer for this image, as drawn above the heatmap."""
    model = next((r for r in image.results if r.get("architecture") == arch), {})
    probability = model.get("covid_probability")
    answer = (f"COVID probability {probability:.3f} ({model.get('label', '?')})"
              if probability is not None else "no answer")
    return f"{SOFTWARE_NAME} {arch} - {image_title(position, image)}: {answer}"


def burn_in(png: bytes, top_lines: list[str]) -> np.ndarray:
    """The heatmap (RGB) between a caption band above and a warning band below."""
    with Image.open(io.BytesIO(png)) as source:
        picture = source.convert("RGB")
    if picture.width < MIN_WIDTH:
        height = max(1, round(picture.height * MIN_WIDTH / picture.width))
        picture = picture.resize((MIN_WIDTH, height), Image.Resampling.BICUBIC)
    top, bottom = band(picture.width, top_lines), band(picture.width, [RESEARCH_WARNING])
    canvas = Image.new("RGB", (picture.width, top.height + picture.height + bottom.height))
    canvas.paste(top, (0, 0))
    canvas.paste(picture, (0, top.height))
    canvas.paste(bottom, (0, top.height + picture.height))
    return np.asarray(canvas, dtype=np.uint8)


def band(width: int, lines: list[str]) -> Image.Image:
    """A black band as wide as the image with the lines in yellow, each in the largest
    font size (up to a twentieth of the width) at which it fits."""
    fonts = [_fitting_font(line, width - 2 * MARGIN, max(8, width // 20)) for line in lines]
    heights = [round(font.size * 1.3) for font in fonts]
    strip = Image.new("RGB", (width, 2 * MARGIN + sum(heights)), BAND_COLOUR)
    draw = ImageDraw.Draw(strip)
    top = MARGIN
    for line, font, height in zip(lines, fonts, heights):
        draw.text((MARGIN, top), line, fill=TEXT_COLOUR, font=font)
        top += height
    return strip


def _fitting_font(line: str, room: int, size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    while size > 8 and font.getlength(line) > room:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def patient_orientation(header: pydicom.Dataset) -> tuple[str, str] | None:
    """The source's row and column directions (main axis only), or None when unknown."""
    given = header.get("PatientOrientation")
    if given is not None and len(given) == 2 and all(len(str(v)) == 1 for v in given):
        return str(given[0]), str(given[1])
    cosines = header.get("ImageOrientationPatient")
    if cosines is None or len(cosines) != 6:
        return None
    letters = []
    for vector in (cosines[:3], cosines[3:]):
        axis = max(range(3), key=lambda i: abs(float(vector[i])))
        letters.append(_DIRECTIONS[axis][0 if float(vector[axis]) > 0 else 1])
    return letters[0], letters[1]


def _capture(pixels: np.ndarray, header: pydicom.Dataset, is_source: bool,
             software_version: str, series_uid: str, series_number: int, sop_uid: str,
             number: int, arch: str) -> hd.sc.SCImage:
    """The SC instance: patient and study from the source header, burned-in annotation
    declared, the source image referenced."""
    orientation = patient_orientation(header) if is_source else None
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header, pixel_array=pixels, photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=sop_uid, instance_number=number,
        manufacturer=SOFTWARE_NAME, manufacturer_model_name=SOFTWARE_NAME,
        software_versions=software_version, series_description=SC_DESCRIPTION,
        patient_orientation=orientation or ("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian)
    if orientation is None:
        capture.PatientOrientation = None  # Type 2: empty rather than a guess
    capture.BodyPartExamined = "CHEST"  # unpaired: no Laterality needed
    capture.BurnedInAnnotation = "YES"
    capture.ImageComments = f"{RESEARCH_WARNING}. Heatmap of model {arch}."
    capture.DerivationDescription = (f"Heatmap of model {arch} over the source image, "
                                     f"with its answer and a warning burned in")
    if is_source:
        reference = pydicom.Dataset()
        reference.ReferencedSOPClassUID = header.SOPClassUID
        reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
        capture.SourceImageSequence = [reference]
    return capture
