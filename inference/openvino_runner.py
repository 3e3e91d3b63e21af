"""OpenVINO as a serving backend: the same checked ONNX conversion, in fp32, bf16 or
INT8, on this CPU's own instructions.

Why: where the CPU has AVX-512 BF16 or VNNI, OpenVINO's CPU plugin runs convolutions
in bf16 or INT8 at about 2x and 3-4x ONNX Runtime's fp32 speed; without them, its fp32
is about ONNX Runtime's. Which one serves is decided by measuring on the machine
(``inference.candidates``), never assumed. The runner answers like ``OnnxBackend``:
``(outputs, features)``, the feature map being the conversion's second output, so
heatmaps and the out-of-distribution check work on every precision.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from .runtime import intra_op_threads

PRECISIONS = ("fp32", "bf16", "int8")
# What OpenVINO does inside a layer it has no INT8 kernel for, per precision: fp32 keeps
# full precision there (the CPU plugin's default on a BF16 CPU is bf16, so it is set).
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# The capability OpenVINO's CPU plugin reports for the instructions each one needs.
_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8"}


def openvino_supported() -> bool:
    """Whether OpenVINO is installed (it is a speed-up, never a must)."""
    from importlib.util import find_spec

    return find_spec("openvino") is not None


@lru_cache(maxsize=1)
def _core():
    import openvino

    return openvino.Core()


def supported_precisions() -> tuple[str, ...]:
    """The precisions this CPU runs natively, as OpenVINO's CPU plugin reports them
    (``()`` without OpenVINO): bf16 needs AVX-512 BF16 or AMX, INT8 VNNI or AVX2."""
    if not openvino_supported():
        return ()
    return tuple(p for p in PRECISIONS if _CAPABILITY[p] in _cpu_capabilities())


@lru_cache(maxsize=1)
def _cpu_capabilities() -> frozenset:
    """Asked of the plugin once per process (the CPU does not change under it)."""
    try:
        return frozenset(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - a plugin that cannot say: fp32 only
        return frozenset({"FP32"})


def int8_path_for(onnx_path: Path) -> Path:
    """``<conversion stem>.int8.xml`` (with its ``.bin``): the NNCF-quantized graph of
    exactly that conversion, so a changed ``.h5`` never serves an old INT8 graph."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.int8.xml")


class OpenVinoBackend:
    """One compiled OpenVINO model, with an inference request per calling thread."""

    name = "openvino"
    choice: dict | None = None  # the measurement that chose this runner (auto)
    choice_pending = False
    max_difference: float | None = None  # from fp32, when checked at load

    def __init__(self, path: Path, precision: str = "fp32", threads: int = 0):
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}")
        self.path = Path(path)
        self.precision = precision
        model = _core().read_model(str(self.path))
        self.compiled = _core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "INFERENCE_NUM_THREADS": intra_op_threads(threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        })
        self.output_count = len(self.compiled.outputs)
        self._local = threading.local()

    @property
    def has_features(self) -> bool:
        return self.output_count > 1

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        request = self._request()
        request.infer({0: batch})
        outputs = [np.array(request.get_output_tensor(i).data, dtype=np.float32)
                   for i in range(self.output_count)]
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
