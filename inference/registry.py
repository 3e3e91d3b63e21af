"""Which model files exist, and what each one expects.

One metadata table (``ARCHITECTURES``, ``MODALITIES``) describes what the service knows;
``discover()`` walks ``MODEL_DIR`` for the published layout
``<arch>/<ARCH>_<CT|CXR>_model.h5`` (case-insensitive) and reads the optional model
card beside each file. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidRequest


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


MODALITIES: dict[str, Modality] = {
    "ct": Modality("ct", "CT scan", "CT", ("vgg16", "vgg19", "inceptionv3")),
    "xray": Modality("xray", "Chest X-ray", "CXR", ("vgg16", "vgg19", "resnet50")),
}
MODALITY_ALIASES = {"cxr": "xray", "x-ray": "xray", "ct": "ct", "xray": "xray"}

DEFAULT_CLASSES = ("NonCOVID", "COVID")
PREPROCESSING_CHOICES = ("rescale", "imagenet")
RESIZE_CHOICES = ("bilinear", "nearest", "bicubic", "area", "lanczos")


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


def model_filename(arch: str, modality: str) -> str:
    return f"{ARCHITECTURES[arch].name}_{MODALITIES[modality].file_tag}_model.h5"


def model_relpath(arch: str, modality: str) -> str:
    """Where the published layout puts the file, relative to ``MODEL_DIR``."""
    return f"{arch}/{model_filename(arch, modality)}"


@dataclass
class ModelCard:
    """What a model expects and how it did. Defaults are the published ones."""

    architecture: str
    modality: str
    classes: tuple[str, ...] = DEFAULT_CLASSES
    input_size: tuple[int, int] = (224, 224)
    preprocessing: str = "rescale"
    resize: str = "bilinear"
    threshold: float = 0.5
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def covid_index(self) -> int:
        """Position of the COVID class in the model's output."""
        for i, name in enumerate(self.classes):
            normalized = name.lower().replace("-", "").replace("_", "").replace(" ", "")
            if normalized in ("covid", "covid19", "positive"):
                return i
        return len(self.classes) - 1

    @classmethod
    def load(cls, path: Path, arch: str, modality: str) -> "ModelCard":
        """Read a card file; missing keys fall back to the published defaults."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("model card must be a JSON object")
        known = {"architecture", "modality", "classes", "input_size", "preprocessing",
                 "resize", "threshold", "metrics"}
        card = cls(
            architecture=arch,
            modality=modality,
            classes=tuple(data.get("classes") or DEFAULT_CLASSES),
            input_size=tuple(int(v) for v in data.get("input_size") or (224, 224)),
            preprocessing=str(data.get("preprocessing") or "rescale"),
            resize=str(data.get("resize") or "bilinear"),
            threshold=float(data.get("threshold", 0.5)),
            metrics=data.get("metrics") or {},
            extra={k: v for k, v in data.items() if k not in known},
        )
        if card.preprocessing not in PREPROCESSING_CHOICES:
            raise ValueError(f"unknown preprocessing {card.preprocessing!r}")
        if card.resize not in RESIZE_CHOICES:
            raise ValueError(f"unknown resize {card.resize!r}")
        if len(card.input_size) != 2 or min(card.input_size) < 8:
            raise ValueError(f"bad input_size {card.input_size!r}")
        return card

    def to_json(self) -> dict:
        return {
            "architecture": self.architecture,
            "modality": self.modality,
            "classes": list(self.classes),
            "input_size": list(self.input_size),
            "preprocessing": self.preprocessing,
            "resize": self.resize,
            "threshold": self.threshold,
            "metrics": self.metrics,
            **self.extra,
        }


@dataclass
class ModelEntry:
    """One (modality, architecture) slot: the file if present, else where it belongs."""

    modality: str
    architecture: str
    path: Path | None
    card: ModelCard
    card_error: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.modality, self.architecture)

    @property
    def available(self) -> bool:
        return self.path is not None

    @property
    def display_name(self) -> str:
        return ARCHITECTURES[self.architecture].name

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


def discover(model_dir: str | os.PathLike) -> list[ModelEntry]:
    """Every known (modality, architecture) slot, installed or not, in a stable order."""
    model_dir = Path(model_dir)
    index = _index_files(model_dir)
    entries = []
    for modality in MODALITIES:
        for arch in ARCHITECTURES:
            path = index.get(model_relpath(arch, modality).lower())
            card = ModelCard(arch, modality,
                             input_size=ARCHITECTURES[arch].default_input_size)
            card_error = None
            if path is not None:
                card_path = path.with_suffix(".json")
                if card_path.is_file():
                    try:
                        card = ModelCard.load(card_path, arch, modality)
                    except (ValueError, TypeError, OSError) as exc:
                        card_error = f"{card_path.name}: {exc}"
            entries.append(ModelEntry(modality, arch, path, card, card_error))
    return entries


def entries_for(entries: list[ModelEntry], modality: str) -> list[ModelEntry]:
    """The slots to show for one modality: installed ones plus the published defaults."""
    published = MODALITIES[modality].published
    return [e for e in entries
            if e.modality == modality and (e.available or e.architecture in published)]
