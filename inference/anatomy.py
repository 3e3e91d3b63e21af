"""What a DICOM file says it shows (BodyPartExamined, the Anatomic Region Sequence), and
the warning when that is not the chest: the models read chest images only, and an
extremity radiograph sent as a chest X-ray would otherwise get a verdict in silence.
Nothing is said when the file names no body part."""

from __future__ import annotations

# Text that names the chest or includes it (PS3.16 Annex L body parts such as CHEST,
# CHESTABDOMEN, THORAX, LUNG, WHOLEBODY; code meanings such as "Thoracic structure").
CHEST_WORDS = ("CHEST", "THORA", "LUNG", "WHOLEBODY", "WHOLE BODY", "TORSO", "TRUNK")
# SNOMED CT codes of the Anatomic Region Sequence that are or include the chest.
CHEST_CODES = {"51185008", "43799004", "39607008", "416775004", "416550000", "38266002",
               "818981001", "818982008", "302551006", "T-D3000", "T-28000"}
KEYWORDS = ["BodyPartExamined", "AnatomicRegionSequence"]


def body_part(dataset) -> str | None:
    """What the file names, as text; None when it names nothing."""
    part = str(dataset.get("BodyPartExamined", "") or "").strip().upper()
    if part:
        return part[:64]
    for item in dataset.get("AnatomicRegionSequence", None) or []:
        code = str(item.get("CodeValue", "") or "").strip()
        meaning = str(item.get("CodeMeaning", "") or "").strip()
        if code or meaning:
            return (f"{meaning} ({code})" if meaning and code else meaning or code)[:64]
    return None


def is_chest(part: str) -> bool:
    text = part.upper()
    code = text.rsplit("(", 1)[-1].rstrip(")").strip()
    return any(word in text for word in CHEST_WORDS) or code in CHEST_CODES


def anatomy_warning(part: str | None) -> str | None:
    if not part or is_chest(part):
        return None
    return (f"The DICOM file says it shows {part}, not the chest: the models read chest "
            "images only, so this answer means little.")
