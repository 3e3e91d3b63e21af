"""Fixtures in the style of Flask's tutorial: app, client, runner, plus real models."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from app import create_app  # noqa: E402
from config import TestingConfig  # noqa: E402
from settings import load_settings  # noqa: E402

from .browser import browser  # noqa: E402,F401 - a fixture
from .mail_server import mail  # noqa: E402,F401 - a fixture
from .model_factory import full_size_model, install, scan_like_png, tiny_model  # noqa: E402
from .oidc_server import oidc_provider, oidc_redirect_uris  # noqa: E402,F401 - fixtures
from .orthanc_server import module_orthanc, orthanc, orthanc_credentials  # noqa: E402,F401 - fixtures

TINY_CARD = {"input_size": [32, 32]}

# A SQLite file already at the newest revision, made once per test process by the
# migrated_database fixture; None while a test asks for a fresh database (the
# ``fresh_database`` mark) or runs outside pytest's fixtures.
_migrated_template: Path | None = None
NO_AUTO_MIGRATE = {"", "0", "false", "no", "off"}  # an app told not to migrate gets no copy


def testing_config(tmp_path, **overrides) -> dict:
    """The testing settings for an app of this test. A SQLite database file that does
    not exist yet starts as a copy of the migrated template, so the app finds it at
    the head revision and runs no Alembic (web/schema.py's upgrade_to_head); a file a
    test made itself (an older schema) is left as it is and migrated by the app."""
    config = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
    config.update(MODEL_DIR=str(tmp_path / "models"),
                  SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'test.sqlite3'}")
    config.update(overrides)
    if config.get("DICOMWEB_URL") and "AUTH_METHODS" not in overrides:
        config["AUTH_METHODS"] = "local"  # the app needs a sign-in method to reach a PACS
    if str(config.get("AUTO_MIGRATE", True)).strip().lower() not in NO_AUTO_MIGRATE:
        copy_migrated_template(config.get("SQLALCHEMY_DATABASE_URI"))
    return config


def copy_migrated_template(database_url) -> None:
    """Copy the migrated template to a ``sqlite:///`` file that does not exist yet."""
    if _migrated_template is None or not isinstance(database_url, str) \
            or not database_url.startswith("sqlite:///"):
        return
    path = Path(database_url.removeprefix("sqlite:///"))
    if path.name in ("", ":memory:") or path.exists() or not path.parent.is_dir():
        return
    shutil.copyfile(_migrated_template, path)


testing_config.__test__ = False  # a helper, not a test, despite its name


def reconfigure(app, **changes) -> None:
    """Change settings of a running app (as a restart with them would)."""
    app.config.update(changes)
    app.extensions["settings"] = load_settings(app.config)


def signed_in(app, client=None, role: str = "analyst", name: str | None = None) -> str:
    """A local account with that role and a personal API token; the test client (if
    given) sends the token with every request from now on. The token."""
    from auth import accounts, tokens

    with app.app_context():
        name = name or f"{role}-{len(accounts.all_users()) + 1}"
        accounts.create(name, role, TEST_PASSWORD)
        _, secret = tokens.create(name)
    if client is not None:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return secret


TEST_PASSWORD = "correct horse battery staple"


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


# The modules that share the session's full-size models (full_size_models below).
FULL_SIZE_MODULES = {"tests/test_conversion.py", "tests/test_explain.py",
                     "tests/test_full_size.py", "tests/test_heatmap_reuse.py"}


def xdist_unit(nodeid: str) -> str:
    """What runs on one pytest-xdist worker, in order: a module's tests (its module
    fixtures, servers and models, start once); every browser test (one site, one
    Chromium); the modules that use the full-size models (each built once)."""
    module = nodeid.split("::")[0]
    if module.startswith("tests/e2e/"):
        return "tests/e2e"
    return "full-size models" if module in FULL_SIZE_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_configure(config):
    """Under pytest-xdist each worker process owns one core (its CPU affinity, which
    the servers and converters it starts inherit): the app sizes its thread pools from
    the affinity, so two workers on two cores do not each run two-thread forward
    passes on both."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    cores = sorted(os.sched_getaffinity(0))
    if worker.startswith("gw") and len(cores) > 1:
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` (make test) with the units of :func:`xdist_unit`, from
    each test's node id: the controller never sees marks, and pytest-xdist's own
    ``xdist_group`` marks cannot rename pytest 9's node ids."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    return UnitScheduling(config, log)


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
def migrated_database(tmp_path_factory) -> Path:
    """A SQLite database migrated to the head revision by a real app start (Alembic,
    once per test process), saved as one consistent file for tests to copy."""
    global _migrated_template
    root = tmp_path_factory.mktemp("migrated_database")
    build = root / "build.sqlite3"
    saved, _migrated_template = _migrated_template, None
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FLASK_INSTANCE_PATH", str(root / "instance"))
            create_app(testing_config(root, SQLALCHEMY_DATABASE_URI=f"sqlite:///{build}"))
    finally:
        _migrated_template = saved
    template = root / "template.sqlite3"
    with sqlite3.connect(build) as source, sqlite3.connect(template) as target:
        source.backup(target)  # the WAL's pages included: one file holds everything
    return template


@pytest.fixture(autouse=True)
def migrated_database_for_new_files(request):
    """Apps of this test start on a copy of the migrated database (see testing_config),
    unless the test is marked ``fresh_database`` (the migration tests)."""
    global _migrated_template
    fresh = request.node.get_closest_marker("fresh_database") is not None
    _migrated_template = None if fresh else request.getfixturevalue("migrated_database")
    yield
    _migrated_template = None


@pytest.fixture
def app_factory(tmp_path, instance_path):
    """The app factory of the tests: ``app_factory(**settings)`` is
    ``create_app(testing_config(tmp_path, **settings))``, in this test's instance folder
    and on a copy of the migrated database."""
    def make(**overrides):
        return create_app(testing_config(tmp_path, **overrides))
    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Small real models for every slot: VGG16/VGG19/InceptionV3 CT, VGG16/ResNet50 X-ray."""
    root = tmp_path_factory.mktemp("tiny_models")
    for seed, (arch, modality) in enumerate([("vgg16", "ct"), ("vgg19", "ct"),
                                             ("inceptionv3", "ct"), ("vgg16", "xray"),
                                             ("resnet50", "xray")]):
        install(tiny_model(seed=seed), root, arch, modality, TINY_CARD)
    return root


@pytest.fixture(scope="session")
def full_size_models():
    """``full_size_models(arch, input_size)``: :func:`full_size_model` (seed 0), each
    architecture and size built once per test process and shared by the tests that
    only read it (they save, predict and explain; none trains or changes weights)."""
    built = {}

    def get(arch: str, input_size=(224, 224)):
        key = (arch, tuple(input_size))
        if key not in built:
            built[key] = full_size_model(arch, input_size=tuple(input_size))
        return built[key]

    return get


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
def app(app_factory, tiny_model_dir):
    return app_factory(MODEL_DIR=str(tiny_model_dir))


@pytest.fixture
def empty_app(app_factory):
    return app_factory()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def scan_png():
    return scan_like_png()
