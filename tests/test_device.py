"""Where ONNX Runtime runs: the CPU by default; CUDA when asked and available, else the
CPU with a warning (CI has no GPU: the fallback is what runs here)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from app import create_app
from inference.cache import ModelCache
from inference.runners import OnnxBackend, execution_providers

from .backend_helpers import entry_for, random_batch
from .backend_helpers import converted_dir_fixture, tiny_dir_fixture  # noqa: F401 - fixtures
from .conftest import testing_config

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("device, available, chosen", [
    ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"],
     ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("cuda", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
])
def test_providers_follow_the_device_and_what_is_installed(device, available, chosen):
    assert execution_providers(device, available) == chosen


def test_cuda_without_a_gpu_serves_on_the_cpu_with_the_same_answers(converted_dir, caplog):
    entry = entry_for(converted_dir)
    batch = random_batch()
    cpu = ModelCache(backend="onnx").get(entry)
    with caplog.at_level(logging.WARNING):
        cuda = ModelCache(backend="onnx", device="cuda").get(entry)
    assert isinstance(cuda.runner, OnnxBackend)
    assert cuda.runner.providers == ["CPUExecutionProvider"]
    assert "no CUDA execution provider" in caplog.text
    np.testing.assert_allclose(cuda.run_batch(batch), cpu.run_batch(batch), atol=1e-6)


def test_an_unknown_device_is_refused_at_start(tmp_path, instance_path):
    with pytest.raises(ValueError, match="INFERENCE_DEVICE"):
        create_app(testing_config(tmp_path, INFERENCE_DEVICE="tpu"))
