"""A model ready to serve: its runner, its micro-batcher, and its Keras object (read
only when a heatmap's head needs it)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from . import conversion as converter
from .batching import MicroBatcher
from .cards import ModelCard
from .precision import precision_details
from .registry import ModelEntry
from .runners import Runner, load_keras_model
from .runtime import resident_memory_mb


@dataclass(eq=False)
class LoadedModel:
    """A model ready to serve: its runner, and its Keras object (loaded on demand).

    ``run_batch`` is what prediction calls; ``keras_model`` is what a heatmap's head
    needs, whichever runner serves.
    """

    entry: ModelEntry
    runner: Runner
    loader: str | None  # "keras" or "tf_keras"; None until the Keras object is loaded
    load_ms: float
    memory_mb: float
    gate: threading.Semaphore = field(default_factory=lambda: threading.BoundedSemaphore(1))
    threads: int = 0
    conversion: converter.ConversionReport | None = None
    card_error: str | None = None  # the card does not fit this model's output
    declined_onnx: object = None  # a conversion auto found slower: not reopened
    choice_stamp: int | None = None  # the precision measurement file last looked at
    _keras_model: object = None
    _keras_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.batcher = MicroBatcher(lambda batch: self.runner.run(batch), self.gate)

    @property
    def card(self) -> ModelCard:
        return self.entry.card

    @property
    def backend_name(self) -> str:
        return self.runner.name

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """Model outputs for a preprocessed ``(n, h, w, 3)`` float32 batch."""
        return self.batcher(batch)[0]

    def run_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Outputs and the last feature map (None when the runner has none)."""
        return self.batcher(batch)

    @property
    def keras_model(self):
        """The Keras model, read from the ``.h5`` the first time it is needed."""
        if self._keras_model is None:
            with self._keras_lock:
                if self._keras_model is None:
                    before = resident_memory_mb()
                    model, self.loader = load_keras_model(self.entry.path, self.threads)
                    self.memory_mb += max(0.0, resident_memory_mb() - before)
                    self._keras_model = model
        return self._keras_model

    def use_runner(self, runner: Runner, conversion=None) -> None:
        """Switch what serves (an attribute swap: requests in flight finish on the old)."""
        self.runner = runner
        if conversion is not None:
            self.conversion = conversion

    def describe(self) -> dict:
        data = {"backend": self.runner.name, "load_ms": round(self.load_ms, 1),
                "memory_mb": round(self.memory_mb, 1), "loader": self.loader}
        if self.conversion is not None:
            data["conversion"] = {"keras_ms": self.conversion.keras_ms,
                                  "onnx_ms": self.conversion.onnx_ms,
                                  "max_abs_diff": self.conversion.max_abs_diff}
        return {**data, **precision_details(self.runner)}
