"""Application factory: configuration, extensions, blueprints, error handlers, CLI.

Importing this module must stay cheap: TensorFlow is imported on first model load.
"""

from __future__ import annotations

import logging
import os
import secrets

from flask import Flask

from config import Config, TestingConfig  # noqa: F401 - TestingConfig re-exported
from extensions import csrf, db, limiter


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(Config)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()
    if test_config:
        app.config.from_mapping(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    _ensure_secret_key(app)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = (
            "sqlite:///" + os.path.join(app.instance_path, "contact.sqlite3"))

    register_extensions(app)
    register_services(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_commands(app)
    register_security_headers(app)
    logging.basicConfig(level=app.config.get("LOG_LEVEL", "INFO"))
    return app


def _ensure_secret_key(app: Flask) -> None:
    """Never run with a fixed key: make a random one once and keep it in the instance."""
    if app.config.get("SECRET_KEY"):
        return
    path = os.path.join(app.instance_path, "secret_key")
    try:
        with open(path, encoding="ascii") as handle:
            key = handle.read().strip()
    except FileNotFoundError:
        key = ""
    if not key:
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key)
    app.config["SECRET_KEY"] = key


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    import contact.models  # noqa: F401 - registers the table

    with app.app_context():
        db.create_all()


def register_services(app: Flask) -> None:
    from inference.service import InferenceService

    app.extensions["inference"] = InferenceService(
        model_dir=app.config["MODEL_DIR"],
        max_loaded=int(app.config["MAX_LOADED_MODELS"]),
        threads=int(app.config["INFERENCE_THREADS"]),
        max_pixels=int(app.config["MAX_IMAGE_PIXELS"]),
    )


def register_blueprints(app: Flask) -> None:
    from contact.views import bp as contact_bp
    from web.api import bp as api_bp
    from web.health import bp as health_bp
    from web.pages import bp as pages_bp

    app.register_blueprint(pages_bp)
    app.register_blueprint(contact_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(health_bp)
    csrf.exempt(api_bp)
    csrf.exempt(health_bp)


def register_error_handlers(app: Flask) -> None:
    from web.errors import register

    register(app)


def register_commands(app: Flask) -> None:
    from contact.cli import contact_cli
    from web.cli import models_cli

    app.cli.add_command(contact_cli)
    app.cli.add_command(models_cli)


def register_security_headers(app: Flask) -> None:
    from web.security import add_security_headers

    app.after_request(add_security_headers)
