"""Which model files exist, and what each one expects.

One metadata table (``ARCHITECTURES``, ``MODALITIES``) describes what the service knows;
``discover()`` walks ``MODEL_DIR`` for the published layout
``<arch>/<ARCH>_<CT|CXR>_model.h5`` (case-insensitive) and reads the optional model
card beside each file. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .cards import ModelCard
from .errors import InvalidRequest, ModelUnavailable


@dataclass(frozen=True)
class Architecture:
    key: str  # "vgg16"
    name: str  # "VGG16", also the file-name prefix
    default_input_size: tuple[int, int]
    imagenet_mode: str  # keras.applications preprocess_input mode


ARCHITECTURES: dict[str, Architecture] = {
    a.key: a
    for a in (
        Architecture("vgg16", "VGG16", (224, 224), "caffe"),
        Architecture("vgg19", "VGG19", (224, 224), "caffe"),
        Architecture("inceptionv3", "InceptionV3", (224, 224), "tf"),
        Architecture("resnet50", "ResNet50", (224, 224), "caffe"),
    )
}


@dataclass(frozen=True)
class Modality:
    key: str  # "ct"
    label: str  # shown to people
    file_tag: str  # "CT" / "CXR" in file names
    published: tuple[str, ...]  # architectures released with the original work
    dicom: frozenset[str]  # DICOM Modality (0008,0060) values of its images


MODALITIES: dict[str, Modality] = {
    "ct": Modality("ct", "CT scan", "CT", ("vgg16", "vgg19", "inceptionv3"),
                   frozenset({"CT"})),
    "xray": Modality("xray", "Chest X-ray", "CXR", ("vgg16", "vgg19", "resnet50"),
                     frozenset({"CR", "DX", "DR", "RG"})),
}
MODALITY_ALIASES = {"cxr": "xray", "x-ray": "xray", "ct": "ct", "xray": "xray"}

def normalize_modality(value: str | None) -> str:
    """Map user input (``ct``, ``xray``, ``cxr``...) to a modality key or raise 400."""
    if not (value or "").strip():
        raise InvalidRequest("The field 'modality' is required: ct or xray.")
    key = MODALITY_ALIASES.get(value.strip().lower())
    if key is None:
        raise InvalidRequest(
            f"Unknown modality {value[:40]!r}: choose one of {', '.join(sorted(MODALITIES))}."
        )
    return key


def normalize_architecture(value: str | None, allow_all: bool = True) -> str:
    """Map user input to an architecture key (or ``all``) or raise 400."""
    key = (value or "all").strip().lower()
    if key == "all" and allow_all:
        return key
    if key not in ARCHITECTURES:
        choices = sorted(ARCHITECTURES) + (["all"] if allow_all else [])
        raise InvalidRequest(f"Unknown model {value[:40]!r}: choose one of {', '.join(choices)}.")
    return key


class ModelChoice(NamedTuple):
    """One ``modality:model`` item of a setting; modality None means both."""

    modality: str | None
    model: str  # an architecture or "all"


def parse_model_choices(text: str | None) -> list[ModelChoice]:
    """``"ct:all,xray:resnet50"``, ``"xray"`` or ``"all"`` (``;`` separates too) ->
    choices; a bad item raises InvalidRequest, so a setting fails at start."""
    choices = []
    for item in (text or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() == "all":
            choices.append(ModelChoice(None, "all"))
            continue
        modality, _, model = item.partition(":")
        choices.append(ModelChoice(normalize_modality(modality),
                                   normalize_architecture(model or "all")))
    return choices


def per_modality(choices: list[ModelChoice]) -> list[ModelChoice]:
    """The choices with "both modalities" spelled out, one choice per modality."""
    return [ModelChoice(key, choice.model) for choice in choices
            for key in ([choice.modality] if choice.modality else list(MODALITIES))]


def modality_of_dicom(dicom_modality: str | None, modality: str) -> bool:
    """Whether a DICOM Modality value is one of this modality's image kinds."""
    return dicom_modality in MODALITIES[modality].dicom


def model_filename(arch: str, modality: str) -> str:
    return f"{ARCHITECTURES[arch].name}_{MODALITIES[modality].file_tag}_model.h5"


def model_relpath(arch: str, modality: str) -> str:
    """Where the published layout puts the file, relative to ``MODEL_DIR``."""
    return f"{arch}/{model_filename(arch, modality)}"


@dataclass
class ModelEntry:
    """One (modality, architecture) slot: the file if present, else where it belongs."""

    modality: str
    architecture: str
    path: Path | None
    card: ModelCard
    card_error: str | None = None
    # (mtime_ns, size) of the card file, None without one: part of the model cache's key,
    # so an edited card takes effect on the next request.
    card_signature: tuple[int, int] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.modality, self.architecture)

    @property
    def available(self) -> bool:
        return self.path is not None

    @property
    def display_name(self) -> str:
        return ARCHITECTURES[self.architecture].name

    def misfit(self, problem: str) -> str:
        """The message for an output that does not fit this model's card (or, without
        a card, the published defaults)."""
        which = (f"its model card {self.path.with_suffix('.json').name}"
                 if self.card_signature else "the published defaults (it has no card)")
        return f"{self.path.name} does not fit {which}: {problem}."

    @property
    def expected_relpath(self) -> str:
        return model_relpath(self.architecture, self.modality)


def _index_files(model_dir: Path) -> dict[str, Path]:
    """Lower-cased relative path -> real path, two levels deep (the published layout)."""
    index: dict[str, Path] = {}
    if not model_dir.is_dir():
        return index
    for root, dirs, files in os.walk(model_dir):
        depth = len(Path(root).relative_to(model_dir).parts)
        if depth >= 1:
            dirs[:] = []
        for name in files:
            rel = Path(root, name).relative_to(model_dir).as_posix().lower()
            index.setdefault(rel, Path(root, name))
    return index


def default_card(arch: str, modality: str) -> ModelCard:
    """The published defaults, for a model file without a card."""
    return ModelCard(arch, modality, input_size=ARCHITECTURES[arch].default_input_size)


def _read_card(path: Path, arch: str, modality: str
               ) -> tuple[ModelCard, str | None, tuple[int, int] | None]:
    """(card, error, signature) for the model file at ``path``. With an error the card is
    only a placeholder: the error makes the model unavailable."""
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        return default_card(arch, modality), None, None
    try:
        stat = card_path.stat()
    except OSError as exc:
        return default_card(arch, modality), f"{card_path.name}: {exc.strerror}", None
    signature = (stat.st_mtime_ns, stat.st_size)
    try:
        return ModelCard.load(card_path, arch, modality), None, signature
    except (ValueError, TypeError, OSError, RecursionError) as exc:
        return default_card(arch, modality), f"{card_path.name}: {exc}", signature


def discover(model_dir: str | os.PathLike) -> list[ModelEntry]:
    """Every known (modality, architecture) slot, installed or not, in a stable order."""
    model_dir = Path(model_dir)
    index = _index_files(model_dir)
    entries = []
    for modality in MODALITIES:
        for arch in ARCHITECTURES:
            path = index.get(model_relpath(arch, modality).lower())
            if path is None:
                entries.append(ModelEntry(modality, arch, None, default_card(arch, modality)))
                continue
            card, error, signature = _read_card(path, arch, modality)
            entries.append(ModelEntry(modality, arch, path, card, error, signature))
    return entries


def entries_for(entries: list[ModelEntry], modality: str) -> list[ModelEntry]:
    """The slots to show for one modality: installed ones plus the published defaults."""
    published = MODALITIES[modality].published
    return [e for e in entries
            if e.modality == modality and (e.available or e.architecture in published)]


def chosen(entries: list[ModelEntry], modality: str | None, model: str = "all"
           ) -> list[ModelEntry]:
    """Installed slots of one modality (None: both) and one architecture (or all)."""
    return [e for e in entries if e.available and modality in (None, e.modality)
            and model in ("all", e.architecture)]


def select_entries(entries: list[ModelEntry], modality: str, model: str
                   ) -> list[ModelEntry]:
    """The slots a request or a study asks for: with ``all`` the installed ones (none is
    ModelUnavailable, naming the files to put in place), else that one slot."""
    if model == "all":
        found = chosen(entries, modality)
        if not found:
            missing = ", ".join(e.expected_relpath for e in entries_for(entries, modality))
            raise ModelUnavailable(f"No {MODALITIES[modality].label} model is installed: "
                                   f"put one of {missing} under the model folder.")
        return found
    return [next(e for e in entries if e.key == (modality, model))]


def check_usable(entries: list[ModelEntry], modality: str, model: str) -> None:
    """Refuse a study at once when its model is not there (not after it queued)."""
    shown = entries_for(entries, modality)
    slot = [e for e in shown if model in ("all", e.architecture)]
    if any(e.available and not e.card_error for e in slot):
        return
    if model == "all" or not slot:
        wanted = ", ".join(e.expected_relpath for e in shown) or "a model file"
        raise ModelUnavailable(f"No model is installed for this modality: put one of "
                               f"{wanted} under the model folder.")
    entry = slot[0]
    if entry.card_error:
        raise ModelUnavailable(f"The model card {entry.card_error} is invalid.")
    raise ModelUnavailable(f"The {entry.display_name} model for {modality} is not "
                           f"installed: put {entry.expected_relpath} under the model folder.")
