"""ONNX conversion checked against Keras: outputs and feature maps within tolerance, for a
toy graph and a full-size ResNet50; a conversion outside it refused and not kept; named
by the model file's hash and the format version, made again for a changed file or an
older format, and reused once cached."""

from __future__ import annotations

import numpy as np
import pytest

from app import create_app
from inference import conversion
from inference.cache import ModelCache
from inference.conversion import ConversionRefused
from inference.preparation import convert_entry
from inference.runners import (KerasGraphBackend, OnnxBackend, conversion_supported,
                               load_keras_model)

from .backend_helpers import (CARD_32, entry_for, onnx_files, random_batch,
                              relative_to_peak)
from .backend_helpers import converted_dir_fixture, tiny_dir_fixture  # noqa: F401 - fixtures
from .conftest import testing_config
from .model_factory import install, tiny_model

pytestmark = pytest.mark.skipif(not conversion_supported(),
                                reason="needs onnx, onnxruntime and tf2onnx")


def test_conversion_matches_keras_and_is_named_by_file_hash(tiny_dir):
    entry = entry_for(tiny_dir)
    path, report, converted = convert_entry(entry)
    digest = conversion.file_sha256(entry.path)
    assert converted
    assert path == entry.path.with_name(f"VGG16_CT_model.{digest[:16]}.v2.onnx")
    assert conversion.FORMAT == 2
    assert report.source_sha256 == digest and report.max_abs_diff <= 1e-4
    assert report.keras_ms > 0 and report.onnx_ms > 0
    assert report.features  # the graph also returns the last feature map

    keras_model, _ = load_keras_model(entry.path)
    batch = random_batch()
    outputs, features = OnnxBackend(path).run(batch)
    np.testing.assert_allclose(outputs, keras_model.predict(batch, verbose=0), atol=1e-4)
    assert features.shape == (3, 30, 30, 4)  # the 3x3 "conv" layer's map
    assert conversion.report_of(OnnxBackend(path)) == report  # the check travels inside


def test_full_size_architecture_converts_within_tolerance(tmp_path, full_size_models):
    """A real 224 x 224 network with the published head, not only a toy graph."""
    model = full_size_models("resnet50")
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
        conversion.convert_to_onnx(runner, entry.path, conversion.file_sha256(entry.path),
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
    assert conversion.compare(keras_runner, OnnxBackend(path), batch, "x", 1e-4) <= 1e-4


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
        conversion.compare(keras_runner, ShiftedMaps(), batch, "VGG16_CT_model.h5", 1e-4)


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
    assert path.name == f"VGG16_CT_model.{conversion.file_sha256(entry.path)[:16]}.v2.onnx"
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
