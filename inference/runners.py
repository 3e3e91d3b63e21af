"""What runs a model's forward pass: a compiled Keras graph or ONNX Runtime.

Keras ``predict()`` and eager calls cost several times the arithmetic on CPU. A traced
``tf.function`` with a fixed input signature removes most of that; ONNX Runtime, whose
fused convolution kernels run ResNet50 and InceptionV3 about 1.5-2x faster again than
TensorFlow on the same cores, removes the rest.

Both runners return ``(outputs, features)``: the model's output rows and its last
convolutional feature map (``None`` for a model without one), so a heatmap reuses the
prediction's own pass through the convolutional base.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from .graph import split_for_serving
from .runtime import import_tensorflow, intra_op_threads

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "keras", "onnx")


class Runner(Protocol):
    name: str

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


class ModelLoadError(Exception):
    """A model file that neither Keras 3 nor tf_keras could read."""


def short_error(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_keras_model(path: Path, threads: int = 0):
    """Read an ``.h5`` with Keras 3, falling back to tf_keras for Keras 2 files.

    Returns ``(model, loader_name)``. Any library error becomes a ``ModelLoadError``
    that names the file and both reasons.
    """
    import_tensorflow(threads)
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False), "keras"
    except Exception as keras_error:  # noqa: BLE001 - any failure means "try tf_keras"
        try:
            import tf_keras

            return tf_keras.models.load_model(str(path), compile=False), "tf_keras"
        except Exception as tf_keras_error:  # noqa: BLE001
            raise ModelLoadError(
                f"{Path(path).name} could not be read (Keras: {short_error(keras_error)}; "
                f"tf_keras: {short_error(tf_keras_error)})"
            ) from tf_keras_error


def normalize_backend(value: str | None) -> str:
    key = (value or "auto").strip().lower()
    if key not in BACKEND_CHOICES:
        raise ValueError(f"INFERENCE_BACKEND must be one of {', '.join(BACKEND_CHOICES)}, "
                         f"not {value!r}")
    return key


def onnx_supported() -> bool:
    """Whether ONNX Runtime can serve here (it is an optional speed-up, not a must)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def conversion_supported() -> bool:
    """Whether this install can convert ``.h5`` files (tf2onnx and onnx present).

    Looked up, not imported: importing tf2onnx imports TensorFlow, which a process
    serving with ONNX Runtime never needs (conversions run in a child process).
    """
    from importlib.util import find_spec

    if find_spec("onnx") is None or find_spec("tf2onnx") is None:
        return False
    return onnx_supported()


class KerasGraphBackend:
    """The Keras model traced once into a graph with a fixed ``[None, h, w, 3]`` input.

    The graph also returns the last feature map when the model has one. ``jit_compile``
    adds XLA; it is off by default because on this kind of CPU it helped InceptionV3
    only, slowed ResNet50, and costs seconds at load, while ONNX Runtime beat it.
    """

    def __init__(self, model, input_size: tuple[int, int], jit_compile: bool = False):
        tf = import_tensorflow()
        height, width = input_size
        self.input_size = (height, width)
        self.model = model
        self.name = "keras-xla" if jit_compile else "keras-graph"
        self._tf = tf
        split, self.target_path = split_for_serving(model)
        spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="image")

        @tf.function(input_signature=[spec], jit_compile=jit_compile or None)
        def forward(batch):
            if split is not None:
                maps, _, outputs = split(batch, training=False)
                return outputs, maps
            outputs = model(batch, training=False)
            if isinstance(outputs, (list, tuple)):
                outputs = outputs[0]
            return outputs

        self.forward = forward
        self.run(np.zeros((1, height, width, 3), dtype=np.float32))  # trace and warm

    @property
    def has_features(self) -> bool:
        return bool(self.target_path)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        result = self.forward(self._tf.convert_to_tensor(batch, dtype=self._tf.float32))
        if isinstance(result, (list, tuple)):
            return np.asarray(result[0]), np.asarray(result[1])
        return np.asarray(result), None


DEVICES = ("cpu", "cuda")


def execution_providers(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers for ``INFERENCE_DEVICE``: ``cuda`` runs on the GPU through
    the CUDA execution provider (``onnxruntime-gpu`` installed in place of
    ``onnxruntime``), with the CPU for what it cannot run; without it, the CPU, said in
    the log. ``cpu`` (the default) is the path every test and CI run."""
    if device not in DEVICES:
        raise ValueError(f"INFERENCE_DEVICE must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cuda":
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("INFERENCE_DEVICE=cuda, but this ONNX Runtime has no CUDA execution "
                    "provider (install onnxruntime-gpu): running on the CPU")
    return ["CPUExecutionProvider"]


class OnnxBackend:
    """An ONNX Runtime session with its thread pool sized for this process."""

    name = "onnx"
    precision = "fp32"  # "fp16" once inference.precision found its graph fit to serve
    fp16_max_difference: float | None = None  # measured there, when fp16 was tried
    choice: dict | None = None  # this CPU's precision measurement (auto), once made
    choice_pending = False  # auto, and this CPU has not measured the conversion yet

    def __init__(self, path: Path, threads: int = 0, device: str = "cpu"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: alone it measured the same, but
        # spinning pools of several loaded models (an "All models" request) or of a
        # busy neighbour took the cores from each other, up to 4x slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No pre-planned block for all of a batch's activations: for VGG16 at batch 8 it
        # held 176 MiB more at the same speed (2.91 vs 2.93 s per batch,
        # bench/onnx_memory.py), the bulk of a study worker's peak.
        options.enable_mem_pattern = False
        self.path = Path(path)
        self.providers = execution_providers(device, ort.get_available_providers())
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=self.providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_count = len(self.session.get_outputs())
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def has_features(self) -> bool:
        return self.output_count > 1

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = self.session.run(None, {self.input_name: batch})
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
