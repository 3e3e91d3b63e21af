"""Which model files exist, and what each one expects.

One metadata table (``ARCHITECTURES``, ``MODALITIES``) describes what the service knows;
``discover()`` walks ``MODEL_DIR`` for the published layout
``<arch>/<ARCH>_<CT|CXR>_model.h5`` (case-insensitive) and reads the optional model
card beside each file. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import math
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


def covid_positions(classes) -> list[int]:
    """Indices of the class names that mean COVID (``COVID``, ``covid-19``, ``positive``)."""
    names = ("".join(ch for ch in str(name).lower() if ch.isalnum()) for name in classes)
    return [i for i, name in enumerate(names) if name in ("covid", "covid19", "positive")]


def _classes(value) -> tuple[str, ...]:
    """At least two unique names in output order, exactly one of them COVID."""
    if value is None:
        return DEFAULT_CLASSES
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"classes must be a list of names, not {value!r}")
    if len(value) < 2 or len(set(value)) != len(value):
        raise ValueError(f"classes must be at least 2 unique names, not {value!r}")
    found = covid_positions(value)
    if len(found) != 1:
        raise ValueError(f"classes must name COVID exactly once (COVID, COVID-19 or "
                         f"positive), not {value!r}")
    return tuple(value)


def _input_size(value) -> tuple[int, int]:
    if value is None:
        return (224, 224)
    if (not isinstance(value, list) or len(value) != 2
            or not all(type(v) is int and v >= 8 for v in value)):
        raise ValueError(f"input_size must be [height, width], whole numbers of at least 8, "
                         f"not {value!r}")
    return (value[0], value[1])


def _choice(name: str, value, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
    return value


def _threshold(value) -> float:
    """A finite number strictly between 0 and 1: 0 or 1 would make one label unreachable."""
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value < 1:
        raise ValueError(f"threshold must be a number between 0 and 1 (exclusive), "
                         f"not {value!r}")
    return float(value)


def check_output_width(card: "ModelCard", width: int) -> str | None:
    """Why the model's output does not fit the card's classes, or None when it does.

    One sigmoid unit stands for two classes (it is the probability of ``classes[1]``).
    """
    if width == len(card.classes) or (width == 1 and len(card.classes) == 2):
        return None
    return (f"{len(card.classes)} classes ({', '.join(card.classes)}) are listed but the "
            f"model gives {width} output{'s' if width != 1 else ''}")


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
        """Position of the COVID class in the model's output; a card must name it."""
        found = covid_positions(self.classes)
        if not found:
            raise ValueError(f"no COVID class among {list(self.classes)!r}")
        return found[0]

    @classmethod
    def load(cls, path: Path, arch: str, modality: str) -> "ModelCard":
        """Read and check a card file (ValueError says what is wrong); missing keys fall
        back to the published defaults, present ones must be valid."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("model card must be a JSON object")
        known = {"architecture", "modality", "classes", "input_size", "preprocessing",
                 "resize", "threshold", "metrics"}
        return cls(
            architecture=arch,
            modality=modality,
            classes=_classes(data.get("classes")),
            input_size=_input_size(data.get("input_size")),
            preprocessing=_choice("preprocessing", data.get("preprocessing"),
                                  PREPROCESSING_CHOICES, "rescale"),
            resize=_choice("resize", data.get("resize"), RESIZE_CHOICES, "bilinear"),
            threshold=_threshold(data.get("threshold", 0.5)),
            metrics=data.get("metrics") or {},
            extra={k: v for k, v in data.items() if k not in known},
        )

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
