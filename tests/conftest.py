"""Fixtures in the style of Flask's tutorial: app, client, runner, plus real models."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from app import create_app  # noqa: E402
from config import TestingConfig  # noqa: E402
from settings import load_settings  # noqa: E402

from .model_factory import install, scan_like_png, tiny_model  # noqa: E402

TINY_CARD = {"input_size": [32, 32]}


def testing_config(tmp_path, **overrides) -> dict:
    config = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
    config.update(MODEL_DIR=str(tmp_path / "models"),
                  SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'test.sqlite3'}")
    config.update(overrides)
    return config


testing_config.__test__ = False  # a helper, not a test, despite its name


def reconfigure(app, **changes) -> None:
    """Change settings of a running app (as a restart with them would)."""
    app.config.update(changes)
    app.extensions["settings"] = load_settings(app.config)


def run_queued_jobs(app) -> int:
    """Run the app's queued jobs here, in the caller, until the queue is empty."""
    huey, count = app.extensions["job_queue"].huey, 0
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
        count += 1
    return count


pytest_plugins = ["pytester"]  # tests of the CI rule below run pytest on small files


def ci_run() -> str:
    """The ``CI`` variable when it asks for a full run ("", "0" and "false" do not)."""
    value = os.environ.get("CI", "")
    return "" if value.strip().lower() in ("", "0", "false") else value


def must_run_in_ci(item, reason: str) -> bool:
    """Browser, server and ONNX tests: skipped in CI, they would hide a missing tool."""
    return (item is not None and (item.get_closest_marker("e2e") is not None
                                  or item.get_closest_marker("services") is not None)) \
        or "onnx" in reason.lower()


def fail_skip_in_ci(report, item=None) -> None:
    """Turn a skip of a test that CI must run into a failure that says why."""
    if not ci_run() or not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if must_run_in_ci(item, reason):
        report.outcome = "failed"
        report.longrepr = (f"CI={ci_run()} runs every browser and ONNX test, but this one "
                           f"was skipped: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_skip_in_ci(outcome.get_result(), item)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (``importorskip("onnx")``) counts too."""
    outcome = yield
    fail_skip_in_ci(outcome.get_result())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Small real models for every slot: VGG16/VGG19/InceptionV3 CT, VGG16/ResNet50 X-ray."""
    root = tmp_path_factory.mktemp("tiny_models")
    for seed, (arch, modality) in enumerate([("vgg16", "ct"), ("vgg19", "ct"),
                                             ("inceptionv3", "ct"), ("vgg16", "xray"),
                                             ("resnet50", "xray")]):
        install(tiny_model(seed=seed), root, arch, modality, TINY_CARD)
    return root


@pytest.fixture(scope="module")
def hostile_models(tmp_path_factory):
    """CT: VGG16, VGG19 (ResNet50 CT deliberately missing, for the 503 case)."""
    root = tmp_path_factory.mktemp("hostile_models")
    for seed, arch in enumerate(["vgg16", "vgg19"]):
        install(tiny_model(seed=seed), root, arch, "ct", TINY_CARD)
    return root


@pytest.fixture(scope="session", autouse=True)
def instance_outside_the_code_tree(tmp_path_factory):
    """Apps built in tests never write the checkout's instance/ folder (secret key, DB)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLASK_INSTANCE_PATH", str(tmp_path_factory.mktemp("instance")))
        yield


@pytest.fixture
def instance_path(tmp_path, monkeypatch):
    """A fresh instance folder for this test's app."""
    path = tmp_path / "instance"
    monkeypatch.setenv("FLASK_INSTANCE_PATH", str(path))
    return path


@pytest.fixture
def app(tmp_path, tiny_model_dir, instance_path):
    return create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir)))


@pytest.fixture
def empty_app(tmp_path, instance_path):
    return create_app(testing_config(tmp_path))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def scan_png():
    return scan_like_png()
