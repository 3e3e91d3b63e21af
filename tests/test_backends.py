"""Inference backends: ONNX conversion checked against Keras, cached by file hash,
chosen by configuration, a Keras-served model switching to its conversion, and a
bounded cache."""

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
from inference import onnx_cache
from inference.cache import ModelCache
from inference.onnx_cache import ConversionRefused
from inference.preparation import convert_entry
from inference.registry import discover
from inference.runners import (KerasGraphBackend, OnnxBackend, conversion_supported,
                               load_keras_model)
from web.cli import parse_warm_models

from .conftest import testing_config
from .model_factory import full_size_model, install, tiny_model

CARD_32 = {"input_size": [32, 32]}
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not conversion_supported(),
                                reason="needs onnx, onnxruntime and tf2onnx")


def entry_for(model_dir, modality="ct", arch="vgg16"):
    return next(e for e in discover(model_dir) if e.key == (modality, arch))


def onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.onnx"))


def random_batch(size=(32, 32), n=3, seed=1):
    return np.random.default_rng(seed).random((n, *size, 3), dtype=np.float32)


def relative_to_peak(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))


@pytest.fixture
def tiny_dir(tmp_path):
    """One tiny model (CT VGG16 slot) in its own folder."""
    install(tiny_model(seed=7), tmp_path, "vgg16", "ct", CARD_32)
    return tmp_path


@pytest.fixture
def converted_dir(tiny_dir):
    """The tiny model with its checked ONNX conversion cached beside it."""
    convert_entry(entry_for(tiny_dir))
    return tiny_dir


# ----------------------------------------------------------------- conversion


def test_conversion_matches_keras_and_is_named_by_file_hash(tiny_dir):
    entry = entry_for(tiny_dir)
    path, report, converted = convert_entry(entry)
    digest = onnx_cache.file_sha256(entry.path)
    assert converted
    assert path == entry.path.with_name(f"VGG16_CT_model.{digest[:16]}.v2.onnx")
    assert onnx_cache.FORMAT == 2
    assert report.source_sha256 == digest and report.max_abs_diff <= 1e-4
    assert report.keras_ms > 0 and report.onnx_ms > 0
    assert report.features  # the graph also returns the last feature map

    keras_model, _ = load_keras_model(entry.path)
    batch = random_batch()
    outputs, features = OnnxBackend(path).run(batch)
    np.testing.assert_allclose(outputs, keras_model.predict(batch, verbose=0), atol=1e-4)
    assert features.shape == (3, 30, 30, 4)  # the 3x3 "conv" layer's map
    assert onnx_cache.report_of(OnnxBackend(path)) == report  # the check travels inside


def test_full_size_architecture_converts_within_tolerance(tmp_path):
    """A real 224 x 224 network with the published head, not only a toy graph."""
    model = full_size_model("resnet50")
    install(model, tmp_path, "resnet50", "xray")
    entry = entry_for(tmp_path, "xray", "resnet50")
    path, report, _ = convert_entry(entry)
    assert report.max_abs_diff <= 1e-4 and report.features
    batch = random_batch((224, 224), n=2, seed=3)
    outputs, features = OnnxBackend(path).run(batch)
    np.testing.assert_allclose(outputs, model.predict(batch, verbose=0), atol=1e-4)
    assert features.shape == (2, 7, 7, 2048)  # conv5_block3_out


def test_conversion_outside_tolerance_is_refused_and_not_kept(tiny_dir):
    entry = entry_for(tiny_dir)
    model, _ = load_keras_model(entry.path)
    runner = KerasGraphBackend(model, (32, 32))
    with pytest.raises(ConversionRefused, match="differ from Keras"):
        onnx_cache.convert_to_onnx(runner, entry.path, onnx_cache.file_sha256(entry.path),
                                   tolerance=-1.0)
    assert onnx_files(tiny_dir) == []  # neither the conversion nor its temporary file


def test_onnx_feature_maps_match_the_keras_graph(converted_dir):
    entry = entry_for(converted_dir)
    [path] = onnx_files(converted_dir)
    keras_runner = KerasGraphBackend(load_keras_model(entry.path)[0], (32, 32))
    batch = random_batch(n=4, seed=5)
    want_outputs, want_maps = keras_runner.run(batch)
    loaded = ModelCache(backend="onnx").get(entry)
    assert loaded.backend_name == "onnx"
    got_outputs, got_maps = loaded.run_with_features(batch)
    assert got_maps.shape == want_maps.shape == (4, 30, 30, 4)
    assert float(np.max(np.abs(want_maps))) > 0  # a map with something in it
    assert relative_to_peak(got_maps, want_maps) <= 1e-4
    np.testing.assert_allclose(got_outputs, want_outputs, atol=1e-4)
    assert onnx_cache.compare(keras_runner, OnnxBackend(path), batch, "x", 1e-4) <= 1e-4


def test_compare_refuses_feature_maps_that_differ(converted_dir):
    """Equal outputs are not enough: a heatmap is computed from the map."""
    entry = entry_for(converted_dir)
    [path] = onnx_files(converted_dir)
    keras_runner = KerasGraphBackend(load_keras_model(entry.path)[0], (32, 32))
    onnx_runner = OnnxBackend(path)

    class ShiftedMaps:
        def run(self, batch):
            outputs, maps = onnx_runner.run(batch)
            return outputs, maps + 1e-3 * max(1.0, float(np.max(np.abs(maps))))

    batch = random_batch(n=2)
    with pytest.raises(ConversionRefused, match="feature maps differ"):
        onnx_cache.compare(keras_runner, ShiftedMaps(), batch, "VGG16_CT_model.h5", 1e-4)


def test_changed_model_file_gets_a_new_conversion(converted_dir):
    [first] = onnx_files(converted_dir)
    install(tiny_model(seed=8), converted_dir, "vgg16", "ct", CARD_32)
    entry = entry_for(converted_dir)
    cache = ModelCache(backend="auto")
    loaded = cache.get(entry)
    assert loaded.backend_name == "keras-graph"  # the old conversion is not this file's
    batch = random_batch()
    keras_out = loaded.run_batch(batch)
    path, _, converted = convert_entry(entry)
    assert converted and path != first
    assert path.name == f"VGG16_CT_model.{onnx_cache.file_sha256(entry.path)[:16]}.v2.onnx"
    assert onnx_files(converted_dir) == [path]  # the stale one is gone
    second = ModelCache(backend="auto").get(entry)
    assert second.backend_name == "onnx"
    np.testing.assert_allclose(second.run_batch(batch), keras_out, atol=1e-4)


def test_conversion_of_an_older_format_is_made_again(converted_dir):
    """A conversion named for another format version is neither served nor kept."""
    [current] = onnx_files(converted_dir)
    old = current.with_name(current.name.replace(".v2.onnx", ".onnx"))
    current.rename(old)
    entry = entry_for(converted_dir)
    assert ModelCache(backend="onnx").get(entry).backend_name == "keras-graph"
    path, _, converted = convert_entry(entry)
    assert converted and path == current
    assert onnx_files(converted_dir) == [current]


def test_convert_again_reuses_the_cached_file(converted_dir, tmp_path):
    _, _, converted = convert_entry(entry_for(converted_dir))
    assert not converted
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(converted_dir)))
    service = app.extensions["inference"]
    _, _, converted = service.convert(entry_for(converted_dir))
    assert not converted
    path, report, converted = service.convert(entry_for(converted_dir), force=True)
    assert converted and onnx_files(converted_dir) == [path]
    assert report.max_abs_diff <= 1e-4


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
    report = onnx_cache.report_of(OnnxBackend(path))
    report.keras_ms, report.onnx_ms = 1.0, 2.0
    onnx.helper.set_model_props(proto, {onnx_cache.METADATA_KEY: json.dumps(report.to_json())})
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
    batcher = loaded.batcher
    images = [random_batch(n=1, seed=seed) for seed in range(8)]
    expected = [loaded.run_batch(image) for image in images]
    assert batcher.batch_sizes == {1: 8}  # the warm-up: one pass per image
    calls = []
    real_run = batcher.run

    def counting_run(batch):
        calls.append(len(batch))
        return real_run(batch)

    batcher.run = counting_run
    outputs = [None] * 8
    barrier = threading.Barrier(8)

    def client(index):
        barrier.wait()
        outputs[index] = loaded.run_batch(images[index])

    with loaded.gate:  # hold the cores so that all eight queue up
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        while len(batcher._pending) < 8:
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join()
    assert calls == [8]  # one forward pass for the eight requests
    assert batcher.batch_sizes == {1: 8, 8: 1}
    for output, want in zip(outputs, expected):
        np.testing.assert_allclose(output, want, atol=1e-5)


def test_a_failing_forward_pass_reaches_every_waiting_request(converted_dir):
    loaded = ModelCache(backend="onnx").get(entry_for(converted_dir))

    def broken(batch):
        raise RuntimeError("out of memory")

    loaded.batcher.run = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        loaded.run_batch(random_batch(n=1))
    assert loaded.batcher._pending == []
    assert not loaded.batcher.batch_sizes  # a failed pass is not counted as a batch


def test_a_batch_that_cannot_be_formed_fails_every_waiting_request(converted_dir):
    loaded = ModelCache(backend="onnx").get(entry_for(converted_dir))
    errors = []

    def client(batch):
        try:
            loaded.run_batch(batch)
        except ValueError as exc:  # collected and asserted below
            errors.append(exc)

    odd_shapes = [random_batch(n=1), random_batch((16, 16), n=1)]
    threads = [threading.Thread(target=client, args=(batch,), daemon=True)
               for batch in odd_shapes]
    with loaded.gate:  # both queue up, then one pass is tried for the two
        for thread in threads:
            thread.start()
        while len(loaded.batcher._pending) < 2:
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request was left waiting"
    assert len(errors) == 2
    assert loaded.batcher._pending == []
