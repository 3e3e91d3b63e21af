"""Out-of-distribution check: training writes a profile for the saved bytes, its
distance tells unlike images from held-out scans, and the app applies it to the pass it
already made (or says why it could not)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil

import numpy as np
import pytest

from inference.ood import (FeatureProfile, ProfileStore, check, load_profile, profile_path,
                           save_profile)
from inference.conversion import file_sha256
from training.__main__ import main
from training.profile import fit_profile

from .conftest import testing_config
from .ood_images import (PER_CLASS, detector_figures, held_out_scans, ood_images, served_distances,
                         text_page, png_bytes, training_arguments)
from .training_data import train_in_fresh_process, write_images

UNLIKE = "This image is unlike the images the VGG16 model was trained on"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The small base trained on synthetic scans of both classes, with its profile."""
    root = tmp_path_factory.mktemp("ood")
    write_images(root / "data" / "COVID", PER_CLASS, True, seed=1)
    write_images(root / "data" / "non-COVID", PER_CLASS, False, seed=2)
    train_in_fresh_process(training_arguments(root / "data", root / "models"),
                           "tests.ood_images:small_base")
    model_path = root / "models" / "vgg16" / "VGG16_CT_model.h5"
    return root, model_path, json.loads(model_path.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def figures(trained):
    _, model_path, _ = trained
    held_out = served_distances(model_path, held_out_scans(100, seed=7))
    unlike = {kind: served_distances(model_path, images)
              for kind, images in ood_images(30, seed=11).items()}
    return detector_figures(held_out, unlike, load_profile(profile_path(model_path)).threshold)


def _copy_model(model_path, folder, with_profile: bool):
    target = folder / "vgg16"
    target.mkdir(parents=True)
    for source in (model_path, model_path.with_suffix(".json")) + \
            ((profile_path(model_path),) if with_profile else ()):
        shutil.copy2(source, target / source.name)
    return target / model_path.name


def _analyse(app, data: bytes) -> dict:
    response = app.test_client().post("/api/v1/predict", data={
        "image": (io.BytesIO(data), "upload.png"), "modality": "ct", "model": "vgg16"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_training_writes_a_profile_of_the_saved_model(trained):
    _, model_path, card = trained
    assert card["metrics"]["accuracy"] >= 0.8  # a model that learnt its task
    profile = load_profile(profile_path(model_path))
    assert profile.model_sha256 == file_sha256(model_path)
    assert profile.feature_size == 64 and profile.whitening.shape == (64, 64)
    sizes = card["split_sizes"]
    assert profile.count == sum(sizes["train"].values())
    assert profile.held_out == sum(sizes["validation"].values()) + sum(sizes["test"].values())
    n = profile.held_out  # the conformal coverage of that many held-out images
    assert profile.percentile == pytest.approx(100 * min(n, np.ceil((n + 1) * 0.98)) / (n + 1),
                                               abs=1e-3)
    assert profile.threshold > 0


def test_distance_tells_unlike_images_from_held_out_scans(figures):
    print(figures)
    assert figures["auroc"] >= 0.95
    assert figures["false_warning_rate"] <= 0.05
    assert min(figures["auroc_by_kind"].values()) >= 0.8, figures["auroc_by_kind"]  # none missed


def test_one_matrix_vector_product_is_the_mahalanobis_distance():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    fit = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12)) + 3.0
    profile = fit_profile(fit, fit[:20], "0" * 64)
    probe = rng.standard_normal((5, 12)) * 2
    expected = np.sqrt(LedoitWolf().fit(fit).mahalanobis(probe))
    np.testing.assert_allclose(profile.distances(probe), expected, rtol=1e-3)
    assert profile.distance(probe[0]) == pytest.approx(expected[0], rel=1e-3)
    assert profile.threshold == pytest.approx(profile.distances(fit[:20]).max())  # n = 20


def test_served_answer_carries_distance_and_warns_beyond_threshold(trained, tmp_path):
    from app import create_app

    root, model_path, _ = trained
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(root / "models")))
    scan = held_out_scans(1, seed=21)[0]
    body = _analyse(app, scan)
    result = body["results"][0]
    profile = load_profile(profile_path(model_path))
    assert result["ood_profile"] is True and result["ood_threshold"] == \
        pytest.approx(profile.threshold, abs=1e-3)
    assert result["ood_distance"] == pytest.approx(
        served_distances(model_path, [scan])[0], abs=2e-3)
    assert result["ood_distance"] <= profile.threshold
    assert not any(UNLIKE in w for w in body["warnings"])

    page = _analyse(app, png_bytes(text_page(np.random.default_rng(3))))
    assert page["results"][0]["ood_distance"] > profile.threshold
    assert f"{UNLIKE}: its answer means little." in page["warnings"]
    models = app.test_client().get("/api/v1/models").get_json()["models"]
    assert next(m for m in models if m["architecture"] == "vgg16")["ood_profile"] is True


def test_result_page_shows_the_distance(trained, tmp_path):
    from app import create_app

    root, _, _ = trained
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(root / "models")))
    response = app.test_client().post("/", data={
        "image": (io.BytesIO(held_out_scans(1, seed=22)[0]), "scan.png"),
        "modality": "ct", "model": "vgg16"}, content_type="multipart/form-data")
    html = response.get_data(as_text=True)
    assert 'id="ood-vgg16">Distance from its training images' in html


def test_model_without_profile_says_so(trained, tmp_path):
    from app import create_app

    _, model_path, _ = trained
    _copy_model(model_path, tmp_path / "models", with_profile=False)
    app = create_app(testing_config(tmp_path))
    body = _analyse(app, png_bytes(text_page(np.random.default_rng(3))))
    result = body["results"][0]
    assert result["ood_profile"] is False and "ood_distance" not in result
    assert not any("out-of-distribution" in w or UNLIKE in w for w in body["warnings"])
    models = app.test_client().get("/api/v1/models").get_json()["models"]
    assert next(m for m in models if m["architecture"] == "vgg16")["ood_profile"] is False


@pytest.mark.parametrize("damage", ["other_bytes", "garbage", "pickled"])
def test_unusable_profile_is_ignored_with_a_warning(trained, tmp_path, damage):
    from app import create_app

    _, model_path, _ = trained
    copy = _copy_model(model_path, tmp_path / "models", with_profile=True)
    path = profile_path(copy)
    if damage == "other_bytes":
        save_profile(dataclasses.replace(load_profile(path), model_sha256="0" * 64), path)
    elif damage == "garbage":
        path.write_bytes(b"not a profile")
    else:
        with open(path, "wb") as handle:  # an object array: only pickle could read it
            np.savez(handle, format=np.int64(1), mean=np.array([{"x": 1}], dtype=object))
    app = create_app(testing_config(tmp_path))
    body = _analyse(app, held_out_scans(1, seed=23)[0])
    assert body["results"][0]["ood_profile"] is False
    assert "ood_distance" not in body["results"][0]
    notes = [w for w in body["warnings"] if w.startswith("No out-of-distribution check "
                                                         "for VGG16")]
    assert len(notes) == 1
    if damage == "other_bytes":
        assert "made for other bytes" in notes[0] and "ignored" in notes[0]


def test_profile_is_read_once_per_version(trained, tmp_path):
    _, model_path, _ = trained
    copy = _copy_model(model_path, tmp_path / "models", with_profile=True)
    store = ProfileStore()
    first, problem = store.lookup(copy)
    assert problem is None and store.lookup(copy)[0] is first
    path = profile_path(copy)
    save_profile(dataclasses.replace(first, threshold=first.threshold / 1e6), path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second, _ = store.lookup(copy)
    assert second is not first and second.threshold == pytest.approx(first.threshold / 1e6)
    features = np.ones((1, 3, 3, second.feature_size), dtype=np.float32)
    assert UNLIKE in check(copy, features, "VGG16", store).warnings[0]


def test_profile_command_for_a_model_trained_elsewhere(trained, tmp_path):
    root, model_path, _ = trained
    copy = _copy_model(model_path, tmp_path / "elsewhere", with_profile=False)
    assert main(["profile", "--data", str(root / "data"), "--model", str(copy),
                 "--modality", "ct", "--held-out", "0.25"]) == 0
    profile = load_profile(profile_path(copy))
    assert (profile.count, profile.held_out) == (2 * PER_CLASS * 3 // 4, 2 * PER_CLASS // 4)
    assert profile.model_sha256 == file_sha256(copy)
    scans = served_distances(copy, held_out_scans(50, seed=31))
    assert np.mean(scans > profile.threshold) <= 0.1
    assert main(["profile", "--data", str(root / "data"), "--model", str(copy),
                 "--held-out", "1.5"]) == 2


def test_profile_needs_images_on_both_sides():
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_profile(np.ones((1, 4)), np.ones((3, 4)), "0" * 64)
    assert isinstance(fit_profile(np.eye(4), np.eye(4)[:1], "0" * 64), FeatureProfile)
