"""``flask models install`` telling what a model file is: architecture and modality from
its name, from ``--arch`` and ``--modality``, or from its layer names; what cannot be told
is asked for, and a model with the wrong number of outputs is refused."""

from __future__ import annotations

from datetime import datetime

import pytest

from inference.recognise import from_name

from .install_helpers import app_fixture, files_fixture  # noqa: F401 - fixtures
from .install_helpers import (assert_nothing_written, card, copy, model_dir, run, sha256,
                              tree)


def test_file_recognised_by_name_is_placed_with_its_card(app, files, tmp_path):
    source = copy(files["two"], tmp_path / "in" / "ResNet50_CXR_model.h5")
    result = run(app, "install", str(source))
    assert result.exit_code == 0, result.output
    placed = model_dir(app) / "resnet50/ResNet50_CXR_model.h5"
    assert placed.read_bytes() == source.read_bytes()
    data = card(app, "resnet50/ResNet50_CXR_model.h5")
    assert data["source"] == str(source.resolve())
    assert data["sha256"] == sha256(source)
    assert data["architecture"] == "resnet50" and data["modality"] == "xray"
    assert data["classes"] == ["NonCOVID", "COVID"] and data["input_size"] == [32, 32]
    assert datetime.fromisoformat(data["installed_at"]).tzinfo is not None
    assert "metrics_source" not in data["metrics"]
    for step in ("checking that it loads", "ResNet50 (from its name)",
                 "installed as resnet50/ResNet50_CXR_model.h5", "served by Keras"):
        assert step in result.output
    assert tree(model_dir(app)) == ["resnet50/ResNet50_CXR_model.h5",
                                    "resnet50/ResNet50_CXR_model.json"]


@pytest.mark.parametrize("label, expected", [
    ("ResNet50_CXR_model.h5", ("resnet50", "xray")),
    ("vgg16_ct.h5", ("vgg16", "ct")),
    ("VGG16CT.H5", ("vgg16", "ct")),
    ("inception_v3-x-ray.h5", ("inceptionv3", "xray")),
    ("CT/InceptionV3.h5", ("inceptionv3", "ct")),
    ("X-ray models/vgg19.h5", ("vgg19", "xray")),
    ("covid_detector_vgg19.h5", ("vgg19", None)),
    ("model.h5", (None, None)),
])
def test_names(label, expected):
    assert from_name(label) == expected


def test_flags_name_what_the_file_name_does_not(app, files, tmp_path):
    source = copy(files["two"], tmp_path / "model.h5")
    result = run(app, "install", str(source), "--modality", "cxr", "--arch", "VGG19")
    assert result.exit_code == 0, result.output
    assert tree(model_dir(app)) == ["vgg19/VGG19_CXR_model.h5", "vgg19/VGG19_CXR_model.json"]


@pytest.mark.parametrize("key, arch", [
    ("vgg16", "vgg16"), ("vgg19", "vgg19"), ("inceptionv3", "inceptionv3"),
    ("resnet50", "resnet50"), ("nested-inceptionv3", "inceptionv3")])
def test_architecture_from_the_layers(app, files, tmp_path, key, arch):
    source = copy(files[key], tmp_path / "model.h5")
    result = run(app, "install", str(source), "--modality", "ct")
    assert result.exit_code == 0, result.output
    assert "(from its layers)" in result.output
    assert [e.architecture for e in app.extensions["inference"].entries()
            if e.available] == [arch]


@pytest.mark.parametrize("name, args, message", [
    ("model.h5", ["--modality", "ct"], "add --arch"),
    ("vgg16.h5", [], "add --modality ct or --modality xray"),
    ("vgg16_ct.h5", ["--arch", "resnet50"], "its name says architecture vgg16"),
])
def test_what_cannot_be_told_is_asked_for(app, files, tmp_path, name, args, message):
    source = copy(files["other"], tmp_path / name)
    result = run(app, "install", str(source), *args)
    assert result.exit_code == 1
    assert message in result.output
    assert_nothing_written(app)


def test_model_with_three_outputs_is_refused(app, files, tmp_path):
    source = copy(files["three"], tmp_path / "VGG16_CT_model.h5")
    result = run(app, "install", str(source))
    assert result.exit_code == 1
    assert "gives 3 outputs" in result.output
    assert_nothing_written(app)
