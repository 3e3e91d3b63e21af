"""Application factory: configuration, extensions, blueprints, error handlers, CLI.

Importing this module must stay cheap: TensorFlow is imported on first model load.
"""

from __future__ import annotations

import logging
import os

from flask import Flask

from config import Config, TestingConfig  # noqa: F401 - TestingConfig re-exported
from extensions import csrf, db, inference, job_queue, limiter
from web.schema import init_schema
from web.secret_key import ensure_secret_key
from web.uploads import InMemoryUploadRequest, allow_study_sized_bodies


def create_app(test_config: dict | None = None) -> Flask:
    # FLASK_INSTANCE_PATH moves the instance folder (secret key, SQLite) out of a
    # read-only code tree, e.g. onto a container volume.
    app = Flask(__name__, instance_relative_config=True,
                instance_path=os.environ.get("FLASK_INSTANCE_PATH") or None)
    app.request_class = InMemoryUploadRequest  # uploads never spool to a temporary file
    app.config.from_object(Config)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()
    if test_config:
        app.config.from_mapping(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    ensure_secret_key(app)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = (
            "sqlite:///" + os.path.join(app.instance_path, "contact.sqlite3"))

    trust_proxies(app)
    register_extensions(app)
    register_services(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_commands(app)
    register_security(app)
    logging.basicConfig(level=app.config.get("LOG_LEVEL", "INFO"))
    return app


def trust_proxies(app: Flask) -> None:
    """Take the client's address from the proxies' headers, when told how many there
    are: behind HAProxy every request would otherwise come from the balancer."""
    proxies = int(app.config.get("PROXY_FIX_X_FOR") or 0)
    if proxies > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    app.before_request(allow_study_sized_bodies)  # before CSRF reads the form
    csrf.init_app(app)
    limiter.init_app(app)
    import contact.models  # noqa: F401 - registers the table
    import pacs.models  # noqa: F401 - registers the table
    import studies.models  # noqa: F401 - registers the tables

    # The schema comes from migrations/ (Alembic): upgraded here unless AUTO_MIGRATE is
    # off, else by `flask db upgrade` before the app starts.
    init_schema(app, db)


def register_services(app: Flask) -> None:
    inference.init_app(app)
    job_queue.init_app(app)


def register_blueprints(app: Flask) -> None:
    from contact.views import bp as contact_bp
    from web.api import bp as api_bp
    from web.apidocs import bp as apidocs_bp
    from web.health import bp as health_bp
    from web.pacs_api import bp as pacs_api_bp
    from web.pacs_pages import bp as pacs_pages_bp
    from web.pages import bp as pages_bp
    from web.studies_api import bp as studies_api_bp
    from web.study_pages import bp as study_pages_bp

    app.register_blueprint(pages_bp)
    app.register_blueprint(study_pages_bp)
    app.register_blueprint(contact_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(studies_api_bp)
    app.register_blueprint(pacs_api_bp)
    app.register_blueprint(pacs_pages_bp)
    app.register_blueprint(apidocs_bp)
    app.register_blueprint(health_bp)
    csrf.exempt(api_bp)
    csrf.exempt(studies_api_bp)
    csrf.exempt(pacs_api_bp)
    csrf.exempt(health_bp)


def register_error_handlers(app: Flask) -> None:
    from web.errors import register

    register(app)


def register_commands(app: Flask) -> None:
    from contact.cli import contact_cli
    from jobs.cli import worker_command
    from pacs.cli import pacs_cli
    from web.cli import models_cli

    app.cli.add_command(contact_cli)
    app.cli.add_command(models_cli)
    app.cli.add_command(worker_command)
    app.cli.add_command(pacs_cli)


def register_security(app: Flask) -> None:
    from web.security import add_security_headers

    app.after_request(add_security_headers)
