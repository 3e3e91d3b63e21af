"""The hostile corpus against a real gunicorn server: real HTTP parsing, real limits.

After every case the server must still answer a health probe and a valid prediction.
"""

from __future__ import annotations

import pytest
import requests

from .hostile_corpus import CASES, HostileCase, upload, valid_png
from .server import start_server
from .test_hostile import check_contract

pytestmark = pytest.mark.load


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory, hostile_models):
    server = start_server(tmp_path_factory.mktemp("hostile_server"), hostile_models,
                          workers=1)
    yield server
    server.stop()


def send(url: str, case: HostileCase) -> requests.Response:
    request = case.build()
    headers = {"Content-Type": request.content_type} if request.content_type else {}
    return requests.request(request.method, url + request.path, data=request.body,
                            headers=headers, timeout=60)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_upload_through_gunicorn(hostile_server, case):
    response = send(hostile_server.url, case)
    body = response.json() if response.headers.get("Content-Type", "").startswith(
        "application/json") else None
    check_contract(case, response.status_code, response.headers.get("Content-Type", ""), body,
                   response.text)
    assert requests.get(hostile_server.url + "/healthz", timeout=10).status_code == 200
    valid = upload(valid_png())
    again = requests.post(hostile_server.url + valid.path, data=valid.body, timeout=60,
                          headers={"Content-Type": valid.content_type})
    assert again.status_code == 200, again.text


def test_server_log_has_no_stack_trace(hostile_server):
    """Run last in this module: nothing in the corpus reached the generic 500 handler."""
    log = hostile_server.log_text()
    assert "Traceback" not in log and "unhandled error" not in log
