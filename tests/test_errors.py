"""Domain errors carry no HTTP: the web edge alone turns them into statuses and codes."""

from __future__ import annotations

import inspect
import io

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError, ProgrammingError

import inference.errors
from inference.errors import ServiceError, UnusableImage


def domain_error_classes() -> list[type]:
    return [cls for _name, cls in inspect.getmembers(inference.errors, inspect.isclass)
            if issubclass(cls, ServiceError)]


def test_domain_errors_say_nothing_about_http():
    classes = domain_error_classes()
    assert len(classes) == 6  # ModelNotFound: the inference protocol's 404
    for cls in classes:
        error = cls("message")
        assert not hasattr(error, "status") and not hasattr(error, "code"), cls.__name__


class StaleStatusImage(UnusableImage):
    """An error that still names its own status: the edge must not listen to it."""

    status = 418
    code = "teapot"


@pytest.mark.parametrize("path", ["/api/v1/predict", "/"])
def test_the_web_edge_alone_chooses_the_status(client, monkeypatch, scan_png, path):
    def refuse(*_args, **_kwargs):
        raise StaleStatusImage("The image has no usable pixels.")

    monkeypatch.setattr(client.application.extensions["inference"], "analyse", refuse)
    response = client.post(path, data={"image": (io.BytesIO(scan_png), "scan.png"),
                                       "modality": "ct", "model": "vgg16"},
                           content_type="multipart/form-data")
    assert response.status_code == 422
    if path == "/":
        assert "The image has no usable pixels." in response.get_data(as_text=True)
    else:
        assert response.get_json()["error"] == {"code": "unprocessable_image",
                                                "message": "The image has no usable pixels."}


OUTAGES = {
    "database": (lambda: OperationalError("SELECT 1", {}, ConnectionError("server closed")),
                 "database_unavailable"),
    "redis": (lambda: RedisConnectionError("Connection refused"), "service_unavailable"),
}


@pytest.mark.parametrize("error, code", OUTAGES.values(), ids=list(OUTAGES))
def test_a_database_or_redis_outage_is_a_503_not_a_500(app, error, code):
    @app.route("/api/v1/outage")
    def outage():
        raise error()

    answer = app.test_client().get("/api/v1/outage")
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == code
    assert "Traceback" not in answer.get_data(as_text=True)


def test_a_bad_query_is_still_an_internal_error(app):
    @app.route("/api/v1/bad-query")
    def bad_query():
        raise ProgrammingError("SELECT nonsense", {}, Exception("syntax error"))

    assert app.test_client().get("/api/v1/bad-query").status_code == 500


def test_a_database_outage_whose_rollback_fails_too_is_still_a_503_page(app, monkeypatch):
    """With the server gone, the handler's own rollback can fail as well: the visitor
    still gets the site's 503 page, not the framework's bare 500."""
    from extensions import db

    @app.route("/outage-page")
    def outage_page():
        raise OUTAGES["database"][0]()

    def rollback_fails():
        raise OperationalError("ROLLBACK", {}, ConnectionError("server closed"))

    with app.app_context():
        monkeypatch.setattr(db.session, "rollback", rollback_fails)
        answer = app.test_client().get("/outage-page")
    assert answer.status_code == 503
    assert "The database is not answering just now" in answer.get_data(as_text=True)
