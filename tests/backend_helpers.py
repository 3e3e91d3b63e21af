"""What the conversion, backend and model-cache tests share: one tiny model in its own
folder (``tiny_dir``), the same with its checked ONNX conversion cached beside it
(``converted_dir``), and small readers of entries, conversions and outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.preparation import convert_entry
from inference.registry import discover

from .model_factory import install, tiny_model

CARD_32 = {"input_size": [32, 32]}
ROOT = Path(__file__).resolve().parents[1]


def entry_for(model_dir, modality="ct", arch="vgg16"):
    return next(e for e in discover(model_dir) if e.key == (modality, arch))


def onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.onnx"))


def random_batch(size=(32, 32), n=3, seed=1):
    return np.random.default_rng(seed).random((n, *size, 3), dtype=np.float32)


def relative_to_peak(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))


@pytest.fixture(name="tiny_dir")
def tiny_dir_fixture(tmp_path):
    """One tiny model (CT VGG16 slot) in its own folder."""
    install(tiny_model(seed=7), tmp_path, "vgg16", "ct", CARD_32)
    return tmp_path


@pytest.fixture(name="converted_dir")
def converted_dir_fixture(tiny_dir):
    """The tiny model with its checked ONNX conversion cached beside it."""
    convert_entry(entry_for(tiny_dir))
    return tiny_dir
