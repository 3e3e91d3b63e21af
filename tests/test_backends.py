"""Inference backends: ONNX conversion checked against Keras, cached by file hash,
chosen by configuration, converted ahead or in the background, and a bounded cache."""

from __future__ import annotations

import gc
import json
import runpy
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from app import create_app
from inference import backends
from inference.backends import ConversionRefused, KerasGraphBackend, OnnxBackend
from inference.loader import ModelCache, load_keras_model
from inference.registry import discover
from web.cli import parse_warm_models

from .conftest import testing_config
from .model_factory import full_size_model, install, tiny_model

CARD_32 = {"input_size": [32, 32]}
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not backends.conversion_supported(),
                                reason="needs onnx, onnxruntime and tf2onnx")


def entry_for(model_dir, modality="ct", arch="vgg16"):
    return next(e for e in discover(model_dir) if e.key == (modality, arch))


def onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.onnx"))


def random_batch(size=(32, 32), n=3, seed=1):
    return np.random.default_rng(seed).random((n, *size, 3), dtype=np.float32)


@pytest.fixture
def tiny_dir(tmp_path):
    """One tiny model (CT VGG16 slot) in its own folder."""
    install(tiny_model(seed=7), tmp_path, "vgg16", "ct", CARD_32)
    return tmp_path


@pytest.fixture
def converted_dir(tiny_dir):
    """The tiny model with its checked ONNX conversion cached beside it."""
    ModelCache().convert(entry_for(tiny_dir))
    return tiny_dir


# ----------------------------------------------------------------- conversion


def test_conversion_matches_keras_and_is_named_by_file_hash(tiny_dir):
    entry = entry_for(tiny_dir)
    path, report, converted = ModelCache().convert(entry)
    digest = backends.file_sha256(entry.path)
    assert converted
    assert path == entry.path.with_name(f"VGG16_CT_model.{digest[:16]}.onnx")
    assert report.source_sha256 == digest and report.max_abs_diff <= 1e-4
    assert report.keras_ms > 0 and report.onnx_ms > 0

    keras_model, _ = load_keras_model(entry.path)
    batch = random_batch()
    np.testing.assert_allclose(OnnxBackend(path).run(batch),
                               keras_model.predict(batch, verbose=0), atol=1e-4)
    assert OnnxBackend(path).report == report  # the check travels inside the file


def test_full_size_architecture_converts_within_tolerance(tmp_path):
    """A real 224 x 224 network with the published head, not only a toy graph."""
    model = full_size_model("resnet50")
    install(model, tmp_path, "resnet50", "xray")
    entry = entry_for(tmp_path, "xray", "resnet50")
    path, report, _ = ModelCache().convert(entry)
    assert report.max_abs_diff <= 1e-4
    batch = random_batch((224, 224), n=2, seed=3)
    np.testing.assert_allclose(OnnxBackend(path).run(batch), model.predict(batch, verbose=0),
                               atol=1e-4)


def test_conversion_outside_tolerance_is_refused_and_not_kept(tiny_dir):
    entry = entry_for(tiny_dir)
    model, _ = load_keras_model(entry.path)
    runner = KerasGraphBackend(model, (32, 32))
    with pytest.raises(ConversionRefused, match="differ from Keras"):
        backends.convert_to_onnx(runner, entry.path, backends.file_sha256(entry.path),
                                 tolerance=-1.0)
    assert onnx_files(tiny_dir) == []


def test_changed_model_file_gets_a_new_conversion(converted_dir):
    entry = entry_for(converted_dir)
    [first] = onnx_files(converted_dir)
    install(tiny_model(seed=8), converted_dir, "vgg16", "ct", CARD_32)
    entry = entry_for(converted_dir)
    cache = ModelCache(backend="auto")
    loaded = cache.get(entry)
    assert loaded.backend_name == "keras-graph"  # the old conversion is not this file's
    path, _, converted = cache.convert(entry)
    assert converted and path != first
    assert onnx_files(converted_dir) == [path]  # the stale one is gone
    second = ModelCache(backend="auto").get(entry)
    assert second.backend_name == "onnx"
    batch = random_batch()
    np.testing.assert_allclose(second.run_batch(batch), loaded.run_batch(batch), atol=1e-4)


def test_convert_again_reuses_the_cached_file(converted_dir):
    _, _, converted = ModelCache().convert(entry_for(converted_dir))
    assert not converted


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
    report = OnnxBackend(path).report
    report.keras_ms, report.onnx_ms = 1.0, 2.0
    onnx.helper.set_model_props(proto, {backends.METADATA_KEY: json.dumps(report.to_json())})
    onnx.save(proto, str(path))
    entry = entry_for(converted_dir)
    assert ModelCache(backend="auto").get(entry).backend_name == "keras-graph"
    assert ModelCache(backend="onnx").get(entry).backend_name == "onnx"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="auto, keras, onnx"):
        ModelCache(backend="tensorrt")


def test_background_conversion_serves_keras_then_switches(tiny_dir):
    entry = entry_for(tiny_dir)
    cache = ModelCache(backend="auto", convert_in_background=True)
    loaded = cache.get(entry)
    batch = random_batch()
    keras_out = loaded.run_batch(batch)  # answers before any conversion exists
    cache.wait_for_conversions(timeout=120)
    assert loaded.backend_name == "onnx"
    assert loaded.conversion is not None and loaded.conversion.max_abs_diff <= 1e-4
    np.testing.assert_allclose(loaded.run_batch(batch), keras_out, atol=1e-4)
    assert loaded.keras_model is not None  # still there for Grad-CAM


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
        "from inference.loader import ModelCache\n"
        "from inference.registry import discover\n"
        f"entry = next(e for e in discover({str(converted_dir)!r}) if e.key == ('ct', 'vgg16'))\n"
        "loaded = ModelCache(backend='auto').get(entry)\n"
        "out = loaded.run_batch(np.zeros((1, 32, 32, 3), np.float32))\n"
        "print(loaded.backend_name, out.shape[1], 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.split() == ["onnx", "2", "False"]


# ----------------------------------------------------------------- API and CLI


def test_models_api_reports_backend_load_time_and_memory(converted_dir, tmp_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(converted_dir)))
    client = app.test_client()
    [before] = [m for m in client.get("/api/v1/models").get_json()["models"]
                if m["available"]]
    assert before["backend"] is None and before["loaded"] is False
    app.extensions["inference"].cache.get(entry_for(converted_dir))
    [row] = [m for m in client.get("/api/v1/models").get_json()["models"] if m["available"]]
    assert row["loaded"] is True and row["backend"] == "onnx"
    assert row["load_ms"] > 0 and row["memory_mb"] >= 0
    for key in ("modality", "architecture", "available", "file", "classes", "input_size",
                "preprocessing", "metrics"):
        assert key in row


def test_cli_compile_then_warm_serves_onnx(tiny_dir, tmp_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_dir)))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["models", "compile", "--modality", "ct", "--model", "vgg16"])
    assert result.exit_code == 0, result.output
    assert "converted in" in result.output and "max |diff|" in result.output
    assert len(onnx_files(tiny_dir)) == 1
    again = runner.invoke(args=["models", "compile"])
    assert again.exit_code == 0 and "already converted" in again.output
    warm = runner.invoke(args=["models", "warm", "--modality", "ct"])
    assert warm.exit_code == 0
    assert "vgg16" in warm.output and "serving with onnx" in warm.output
    assert app.extensions["inference"].cache.is_loaded(entry_for(tiny_dir))


def test_warm_models_setting_is_parsed():
    assert parse_warm_models("") == []
    assert parse_warm_models("all") == [(None, "all")]
    assert parse_warm_models("ct:vgg16, xray") == [("ct", "vgg16"), ("xray", "all")]


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


# ----------------------------------------------------------------- cache


def test_eviction_honours_max_loaded_models_and_frees_the_model(tmp_path):
    for arch in ("vgg16", "vgg19", "inceptionv3"):
        install(tiny_model(), tmp_path, arch, "ct", CARD_32)
    cache = ModelCache(max_loaded=2, backend="keras")
    first = cache.get(entry_for(tmp_path, "ct", "vgg16"))
    gone = weakref.ref(first)
    gone_keras = weakref.ref(first.keras_model)
    del first
    cache.get(entry_for(tmp_path, "ct", "vgg19"))
    cache.get(entry_for(tmp_path, "ct", "inceptionv3"))
    assert len(cache.loaded()) == 2
    assert not cache.is_loaded(entry_for(tmp_path, "ct", "vgg16"))
    gc.collect()
    assert gone() is None and gone_keras() is None


def test_concurrent_first_requests_load_once_and_all_answer(converted_dir):
    entry = entry_for(converted_dir)
    cache = ModelCache(backend="onnx")
    barrier = threading.Barrier(8)
    outputs, errors = [], []
    batch = random_batch(n=1)

    def client():
        barrier.wait()
        try:
            outputs.append(cache.get(entry).run_batch(batch))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cache.load_counts[("ct", "vgg16")] == 1
    for output in outputs:
        np.testing.assert_allclose(output, outputs[0], atol=1e-6)


def test_queued_requests_run_together_and_each_gets_its_own_answer(converted_dir):
    loaded = ModelCache(backend="onnx").get(entry_for(converted_dir))
    images = [random_batch(n=1, seed=seed) for seed in range(8)]
    expected = [loaded.run_batch(image) for image in images]
    calls = []
    real_run = loaded.backend.run

    def counting_run(batch):
        calls.append(len(batch))
        return real_run(batch)

    loaded.backend.run = counting_run
    outputs = [None] * 8
    barrier = threading.Barrier(8)

    def client(index):
        barrier.wait()
        outputs[index] = loaded.run_batch(images[index])

    with loaded.gate:  # hold the cores so that all eight queue up
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        while len(loaded._pending) < 8:
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join()
    assert calls == [8]  # one forward pass for the eight requests
    for output, want in zip(outputs, expected):
        np.testing.assert_allclose(output, want, atol=1e-5)


def test_a_failing_forward_pass_reaches_every_waiting_request(converted_dir):
    loaded = ModelCache(backend="onnx").get(entry_for(converted_dir))

    def broken(batch):
        raise RuntimeError("out of memory")

    loaded.backend.run = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        loaded.run_batch(random_batch(n=1))
    assert loaded._pending == []
