"""``flask models install`` and ``remove`` against real files and real tiny Keras models:
a refused file or a second install over an installed model, folders installed all or
nothing, removal of a model with its card, profile and conversions, what the API and
the pages show, and the ONNX conversion made at install. How a file is recognised is in
test_install_recognise.py; zips, downloads and Google Drive are in
test_install_sources.py."""

from __future__ import annotations

import pytest

from app import create_app
from inference.runners import conversion_supported

from .conftest import testing_config
from .install_helpers import app_fixture, files_fixture  # noqa: F401 - fixtures
from .install_helpers import (assert_nothing_written, card, copy, model_dir, run, sha256,
                              tree)


# -- over an installed model, folders -----------------------------------------------------

def test_a_refused_file_leaves_the_installed_model_untouched(app, files, tmp_path):
    assert run(app, "install", str(copy(files["two"], tmp_path / "a/vgg16_ct.h5"))
               ).exit_code == 0
    before = {p: (model_dir(app) / p).read_bytes() for p in tree(model_dir(app))}
    result = run(app, "install", str(copy(files["three"], tmp_path / "b/vgg16_ct.h5")))
    assert result.exit_code == 1
    assert {p: (model_dir(app) / p).read_bytes() for p in tree(model_dir(app))} == before


def test_a_second_install_replaces_the_file_and_its_stale_conversions(app, files, tmp_path):
    assert run(app, "install", str(copy(files["two"], tmp_path / "a/vgg16_ct.h5"))
               ).exit_code == 0
    stale = model_dir(app) / "vgg16/VGG16_CT_model.0123456789abcdef.v2.onnx"
    stale.write_bytes(b"old conversion")
    newer = copy(files["other"], tmp_path / "b/vgg16_ct.h5")
    assert run(app, "install", str(newer)).exit_code == 0
    assert (model_dir(app) / "vgg16/VGG16_CT_model.h5").read_bytes() == newer.read_bytes()
    assert card(app, "vgg16/VGG16_CT_model.h5")["sha256"] == sha256(newer)
    assert tree(model_dir(app)) == ["vgg16/VGG16_CT_model.h5", "vgg16/VGG16_CT_model.json"]


def test_folder_is_walked_and_its_name_gives_the_modality(app, files, tmp_path):
    folder = tmp_path / "ct_models"
    copy(files["two"], folder / "vgg16.h5")
    copy(files["other"], folder / "more" / "ResNet50_CXR_model.h5")
    (folder / "notes.txt").write_text("not a model")
    result = run(app, "install", str(folder))
    assert result.exit_code == 0, result.output
    assert "Found 2 model file(s)" in result.output
    assert tree(model_dir(app)) == [
        "resnet50/ResNet50_CXR_model.h5", "resnet50/ResNet50_CXR_model.json",
        "vgg16/VGG16_CT_model.h5", "vgg16/VGG16_CT_model.json"]
    assert card(app, "vgg16/VGG16_CT_model.h5")["source"] == str(folder.resolve())


def test_one_bad_file_in_a_folder_installs_none(app, files, tmp_path):
    folder = tmp_path / "incoming"
    copy(files["two"], folder / "vgg16_ct.h5")
    copy(files["three"], folder / "vgg19_ct.h5")
    result = run(app, "install", str(folder))
    assert result.exit_code == 1 and "vgg19_ct.h5" in result.output
    assert_nothing_written(app)


# -- remove, API, pages, conversion -------------------------------------------------------

def test_remove_deletes_the_file_its_card_profile_and_conversions_only(app, files, tmp_path):
    for name in ("vgg16_ct.h5", "vgg16_cxr.h5"):
        assert run(app, "install", str(copy(files["two"], tmp_path / name))).exit_code == 0
    folder = model_dir(app) / "vgg16"
    for suffix in (".0123456789abcdef.v2.onnx", ".0123456789abcdef.v2.failed",
                   ".profile.npz"):
        (folder / f"VGG16_CT_model{suffix}").write_text("x")
        (folder / f"VGG16_CXR_model{suffix}").write_text("x")
    result = run(app, "remove", "ct", "VGG16")
    assert result.exit_code == 0, result.output
    assert tree(model_dir(app)) == [
        "vgg16/VGG16_CXR_model.0123456789abcdef.v2.failed",
        "vgg16/VGG16_CXR_model.0123456789abcdef.v2.onnx",
        "vgg16/VGG16_CXR_model.h5", "vgg16/VGG16_CXR_model.json",
        "vgg16/VGG16_CXR_model.profile.npz"]
    again = run(app, "remove", "ct", "vgg16")
    assert again.exit_code == 1 and "no VGG16 CT scan model is installed" in again.output
    assert run(app, "remove", "mri", "vgg16").exit_code == 1


def test_api_lists_source_and_sha256(app, files, tmp_path):
    source = copy(files["two"], tmp_path / "VGG16_CT_model.h5")
    assert run(app, "install", str(source)).exit_code == 0
    rows = {(r["modality"], r["architecture"]): r
            for r in app.test_client().get("/api/v1/models").get_json()["models"]}
    assert rows["ct", "vgg16"]["source"] == source.name  # the server's folders stay private
    assert rows["ct", "vgg16"]["sha256"] == sha256(source)
    assert rows["xray", "vgg16"]["source"] is None and rows["xray", "vgg16"]["sha256"] is None


def test_pages_without_models_name_the_install_command(app, files, tmp_path):
    page = app.test_client().get("/").get_data(as_text=True)
    assert "flask models install published-ct" in page
    assert "flask models install published-cxr" in page
    assert run(app, "install", str(copy(files["two"], tmp_path / "vgg16_ct.h5"))
               ).exit_code == 0
    page = app.test_client().get("/").get_data(as_text=True)
    assert "flask models install published-ct" not in page
    assert "flask models install published-cxr" in page
    about = app.test_client().get("/about").get_data(as_text=True)
    assert "flask models install published-ct" in about  # VGG19, InceptionV3 CT missing


@pytest.mark.skipif(not conversion_supported(), reason="needs onnx, onnxruntime and tf2onnx")
def test_install_converts_through_the_service_and_remove_deletes_it(tmp_path, instance_path,
                                                                    files):
    app = create_app(testing_config(tmp_path, INFERENCE_BACKEND="auto"))
    result = run(app, "install", str(copy(files["two"], tmp_path / "vgg16_ct.h5")))
    assert result.exit_code == 0, result.output
    assert "converted for ONNX Runtime" in result.output
    assert [p for p in tree(model_dir(app)) if p.endswith(".onnx")]
    assert run(app, "remove", "ct", "vgg16").exit_code == 0
    assert tree(model_dir(app)) == []


@pytest.mark.skipif(not conversion_supported(), reason="needs onnx, onnxruntime and tf2onnx")
def test_failed_conversion_still_installs(tmp_path, instance_path, files):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the ONNX cache folder should be")
    app = create_app(testing_config(tmp_path, INFERENCE_BACKEND="auto",
                                    ONNX_CACHE_DIR=str(blocker)))
    result = run(app, "install", str(copy(files["two"], tmp_path / "vgg16_ct.h5")))
    assert result.exit_code == 0, result.output
    assert "conversion failed" in result.output and "served by Keras" in result.output
    assert tree(model_dir(app)) == ["vgg16/VGG16_CT_model.h5", "vgg16/VGG16_CT_model.json"]
