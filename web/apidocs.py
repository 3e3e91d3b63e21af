"""The API page: ``/api`` shows the OpenAPI document with Swagger UI, plus curl examples.

Swagger UI's files come from the ``flask-swagger-ui`` package (its ``dist`` folder) and
are served here by name from a fixed list, so the page works offline and nothing else in
that folder, or outside it, can be asked for. The page's own start-up code is
``static/js/api-docs.js``: the Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, abort, render_template, send_from_directory

bp = Blueprint("apidocs", __name__, url_prefix="/api")

SWAGGER_UI_DIR = str(files("flask_swagger_ui") / "dist")
SWAGGER_UI_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})


@bp.get("")
def api_docs():
    return render_template("api_docs.html")


@bp.get("/swagger-ui/<name>")
def swagger_ui_asset(name: str):
    if name not in SWAGGER_UI_ASSETS:
        abort(404)
    return send_from_directory(SWAGGER_UI_DIR, name)
