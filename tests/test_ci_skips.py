"""Under ``CI`` a skipped browser or ONNX test fails the run; other skips stay skips."""

from __future__ import annotations

import pytest

CONFTEST = '''
import pytest
from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: browser test")
'''

TESTS = '''
import pytest


@pytest.mark.e2e
@pytest.mark.skip(reason="/usr/bin/chromium is missing")
def test_browser():
    pass


@pytest.mark.skipif(True, reason="needs onnx, onnxruntime and tf2onnx")
def test_conversion():
    pass


def test_runtime_onnx_skip():
    pytest.skip("tf2onnx is not installed")


@pytest.mark.skip(reason="only on Windows")
def test_unrelated():
    pass


@pytest.mark.xfail(reason="onnx opset gap", run=False)
def test_expected_failure():
    pass
'''

MODULE_SKIP = '''
import pytest

pytest.importorskip("onnx_package_that_does_not_exist")


def test_never_collected():
    pass
'''


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_skips=TESTS, test_module_skip=MODULE_SKIP)
    return pytester


def run(project, *paths):
    return project.runpytest_inprocess("-p", "no:cacheprovider", *paths)


def test_ci_turns_browser_and_onnx_skips_into_failures(project, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = run(project, "test_skips.py")
    assert result.parseoutcomes() == {"failed": 1, "errors": 2, "skipped": 1, "xfailed": 1}
    result.stdout.fnmatch_lines([
        "FAILED test_skips.py::test_runtime_onnx_skip - CI=true *: tf2onnx is not installed",
        "ERROR test_skips.py::test_browser - CI=true runs every browser and ONNX test, "
        "but this one was skipped: /usr/bin/chromium is missing",
        "ERROR test_skips.py::test_conversion - CI=true *: needs onnx*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_ci_fails_a_module_skipped_for_want_of_onnx(project, monkeypatch):
    monkeypatch.setenv("CI", "1")
    result = run(project, "test_module_skip.py")
    result.stdout.fnmatch_lines(["ERROR test_module_skip.py - CI=1 runs every browser and "
                                 "ONNX test, but this one was skipped: *onnx_package*"])
    assert result.ret != pytest.ExitCode.OK


@pytest.mark.parametrize("ci", [None, "false"])
def test_without_ci_the_same_tests_only_skip(project, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = run(project)
    assert result.parseoutcomes() == {"skipped": 5, "xfailed": 1}
    assert result.ret == pytest.ExitCode.OK
