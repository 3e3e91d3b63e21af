"""Model cards: what a model expects (classes, input size, preprocessing, threshold)
and how it did, read and checked from the JSON file beside the model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_CLASSES = ("NonCOVID", "COVID")
PREPROCESSING_CHOICES = ("rescale", "imagenet")
RESIZE_CHOICES = ("bilinear", "nearest", "bicubic", "area", "lanczos")


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


def covid_probability(output: np.ndarray, card: ModelCard) -> float:
    """Read one model output row: softmax over the card's classes, or a single sigmoid
    unit, which is P(classes[1]) as Keras trains it. ValueError when the row does not
    fit the card."""
    values = np.asarray(output, dtype=np.float64).ravel()
    problem = check_output_width(card, values.size)
    if problem:
        raise ValueError(problem)
    if values.size == 1:
        p_second = float(np.clip(values[0], 0.0, 1.0))
        return p_second if card.covid_index == 1 else 1.0 - p_second
    return float(np.clip(values[card.covid_index], 0.0, 1.0))
