"""Inference backends: which one serves a model (the configured choice, ``auto`` and the
speeds it measured, a Keras-served model switching to its conversion, ONNX serving
without TensorFlow), what the models API reports of it, ``flask models compile`` and
``warm``, and gunicorn's thread settings. The conversion itself is tested in
test_conversion.py, the cache and batching in test_model_cache.py."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys

import numpy as np
import pytest

from app import create_app
from inference import conversion
from inference.cache import ModelCache
from inference.preparation import convert_entry
from inference.registry import parse_model_choices
from inference.runners import OnnxBackend, conversion_supported

from .backend_helpers import ROOT, entry_for, onnx_files, random_batch, relative_to_peak
from .backend_helpers import converted_dir_fixture, tiny_dir_fixture  # noqa: F401 - fixtures
from .conftest import testing_config

pytestmark = pytest.mark.skipif(not conversion_supported(),
                                reason="needs onnx, onnxruntime and tf2onnx")


# ----------------------------------------------------------------- selection


@pytest.mark.parametrize("choice,expected", [("keras", "keras-graph"), ("onnx", "onnx"),
                                             ("auto", "onnx")])
def test_backend_follows_configuration(converted_dir, tmp_path, choice, expected):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(converted_dir),
                                    INFERENCE_BACKEND=choice))
    loaded = app.extensions["inference"].cache.get(entry_for(converted_dir))
    assert loaded.backend_name == expected


def test_auto_keeps_keras_where_keras_measured_faster(converted_dir):
    import onnx

    [path] = onnx_files(converted_dir)
    proto = onnx.load(str(path))
    report = conversion.report_of(OnnxBackend(path))
    report.keras_ms, report.onnx_ms = 1.0, 2.0
    onnx.helper.set_model_props(proto, {conversion.METADATA_KEY: json.dumps(report.to_json())})
    onnx.save(proto, str(path))
    entry = entry_for(converted_dir)
    cache = ModelCache(backend="auto")
    assert cache.get(entry).backend_name == "keras-graph"
    assert cache.get(entry).backend_name == "keras-graph"  # and it is not reopened
    assert ModelCache(backend="onnx").get(entry).backend_name == "onnx"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="auto, keras, onnx"):
        ModelCache(backend="tensorrt")


def test_keras_served_model_switches_to_onnx_once_converted(tiny_dir):
    entry = entry_for(tiny_dir)
    cache = ModelCache(backend="onnx")
    loaded = cache.get(entry)
    assert loaded.backend_name == "keras-graph" and loaded.conversion is None
    batch = random_batch()
    keras_out, keras_maps = loaded.run_with_features(batch)
    convert_entry(entry)
    assert loaded.backend_name == "keras-graph"  # nothing changes under a running request
    again = cache.get(entry)
    assert again is loaded and cache.load_counts[("ct", "vgg16")] == 1
    assert loaded.backend_name == "onnx"
    assert loaded.conversion is not None and loaded.conversion.max_abs_diff <= 1e-4
    outputs, maps = loaded.run_with_features(batch)
    np.testing.assert_allclose(outputs, keras_out, atol=1e-4)
    assert relative_to_peak(maps, keras_maps) <= 1e-4
    assert loaded.keras_model is not None  # still there for Grad-CAM
    assert loaded.describe()["conversion"]["max_abs_diff"] <= 1e-4


def test_keras_only_configuration_never_switches(tiny_dir):
    entry = entry_for(tiny_dir)
    cache = ModelCache(backend="keras")
    loaded = cache.get(entry)
    convert_entry(entry)
    assert cache.get(entry) is loaded and loaded.backend_name == "keras-graph"


def test_onnx_served_model_loads_keras_only_when_asked(converted_dir):
    loaded = ModelCache(backend="onnx").get(entry_for(converted_dir))
    assert loaded.loader is None
    batch = random_batch()
    np.testing.assert_allclose(loaded.keras_model.predict(batch, verbose=0),
                               loaded.run_batch(batch), atol=1e-4)
    assert loaded.loader == "keras"


def test_serving_from_onnx_needs_no_tensorflow(converted_dir):
    code = (
        "import sys; import numpy as np\n"
        "from inference.cache import ModelCache\n"
        "from inference.registry import discover\n"
        f"entry = next(e for e in discover({str(converted_dir)!r}) if e.key == ('ct', 'vgg16'))\n"
        "loaded = ModelCache(backend='auto').get(entry)\n"
        "out, maps = loaded.run_with_features(np.zeros((1, 32, 32, 3), np.float32))\n"
        "print(loaded.backend_name, out.shape[1], maps.shape[-1], 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.split() == ["onnx", "2", "4", "False"]


# ----------------------------------------------------------------- API and CLI


def available_rows(client) -> list[dict]:
    return [m for m in client.get("/api/v1/models").get_json()["models"] if m["available"]]


def test_models_api_reports_backend_load_time_and_memory(converted_dir, tmp_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(converted_dir)))
    client = app.test_client()
    [before] = available_rows(client)
    assert before["backend"] is None and before["loaded"] is False
    assert before["memory_mb"] is None and before["preparation"] == "ready"
    app.extensions["inference"].cache.get(entry_for(converted_dir))
    [row] = available_rows(client)
    assert row["loaded"] is True and row["backend"] == "onnx"
    assert row["load_ms"] > 0
    assert isinstance(row["memory_mb"], float)
    assert row["memory_mb"] < 256  # a 32 x 32 four-filter network, not a whole runtime
    assert row["conversion"]["max_abs_diff"] <= 1e-4
    for key in ("modality", "architecture", "available", "file", "classes", "input_size",
                "preprocessing", "metrics", "preparation"):
        assert key in row


def test_models_api_counts_the_memory_of_a_keras_load(tiny_dir, tmp_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_dir),
                                    INFERENCE_BACKEND="keras"))
    client = app.test_client()
    app.extensions["inference"].cache.get(entry_for(tiny_dir))
    [row] = available_rows(client)
    assert row["backend"] == "keras-graph" and row["loader"] == "keras"
    assert row["preparation"] is None  # nothing is converted for a Keras-only server
    # Growth of this process's resident memory over the load: TensorFlow was already
    # imported here, so it is the model's share only.
    assert isinstance(row["memory_mb"], float) and row["memory_mb"] < 256


def test_cli_compile_then_warm_serves_onnx(tiny_dir, tmp_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_dir)))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["models", "compile", "--modality", "ct", "--model", "vgg16"])
    assert result.exit_code == 0, result.output
    assert "converted in" in result.output and "max |diff|" in result.output
    [path] = onnx_files(tiny_dir)
    assert path.name.endswith(".v2.onnx") and path.name in result.output
    again = runner.invoke(args=["models", "compile"])
    assert again.exit_code == 0 and "already converted" in again.output
    warm = runner.invoke(args=["models", "warm", "--modality", "ct"])
    assert warm.exit_code == 0
    assert "vgg16" in warm.output and "serving with onnx" in warm.output
    assert app.extensions["inference"].cache.is_loaded(entry_for(tiny_dir))


def test_warm_models_setting_is_parsed():
    assert parse_model_choices("") == []
    assert parse_model_choices("all") == [(None, "all")]
    assert parse_model_choices("ct:vgg16, xray") == [("ct", "vgg16"), ("xray", "all")]


@pytest.mark.parametrize("workers", [None, 1, 2])
def test_gunicorn_settings_never_oversubscribe_the_cores(monkeypatch, workers):
    """Each worker's inference threads come from the real worker count (``-w`` too)."""
    import os
    from types import SimpleNamespace

    for name in ("WEB_CONCURRENCY", "FLASK_INFERENCE_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, "0")  # so that monkeypatch restores what post_fork sets
        monkeypatch.delenv(name)
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["worker_class"] == "gthread" and not settings["preload_app"]
    count = workers or settings["workers"]
    server = SimpleNamespace(cfg=SimpleNamespace(workers=count))
    settings["post_fork"](server, None)  # runs in the worker, before the app starts
    threads = int(os.environ["FLASK_INFERENCE_THREADS"])
    assert threads >= 1
    assert count * threads <= max(settings["CORES"], count)
    assert os.environ["OMP_NUM_THREADS"] == str(threads)


def test_importing_the_app_does_not_import_tensorflow():
    code = ("import sys, app; app.create_app({'TESTING': True, 'SECRET_KEY': 'x'}); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
