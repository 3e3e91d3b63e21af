"""Application factory: the one place that wires the app together.

Configuration becomes typed settings once; then extensions, the inference service, the
queue with each domain's jobs, blueprints, error handlers and commands. Importing this
module must stay cheap: TensorFlow is imported on first model load.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from flask import Flask

import audit.models  # noqa: F401 - registers the tables
import auth.models  # noqa: F401 - registers the tables
import contact.models  # noqa: F401 - registers the table
import pacs.node.models  # noqa: F401 - registers the tables
import pacs.models  # noqa: F401 - registers the table
import studies.models  # noqa: F401 - registers the tables
from audit.cli import audit_cli
from audit.tasks import register_audit_tasks
from audit.trail import install as install_audit_trail
from auth.cli import tokens_cli, users_cli
from auth.oidc import register_provider
from auth.sessions import SessionCookies
from config import Config, TestingConfig  # noqa: F401 - TestingConfig re-exported
from contact.cli import contact_cli
from contact.tasks import ContactTasks, register_contact_tasks
from contact.views import bp as contact_bp
from pacs.node.cli import dicom_cli
from pacs.node.tasks import register_node_tasks
from extensions import csrf, db, limiter
from inference.service import InferenceService
from jobs.cli import worker_command
from jobs.queue import JobQueue
from pacs.cli import pacs_cli
from pacs.tasks import register_pacs_tasks
from settings import InferenceSettings, Settings, load_settings
from studies.tasks import register_study_tasks
from web.access import register_door, require_rules
from web.api import bp as api_bp
from web.apidocs import bp as apidocs_bp
from web.audit_pages import bp as audit_bp
from web.auth_pages import bp as auth_bp
from web.cli import models_cli
from web.errors import register as register_error_pages
from web.health import bp as health_bp
from web.inference_protocol import bp as inference_protocol_bp
from web.migrate import init_schema
from web.pacs_api import bp as pacs_api_bp
from web.pacs_pages import bp as pacs_pages_bp
from web.pages import bp as pages_bp
from web.redaction import install as install_log_redaction
from web.secret_key import ensure_secret_key
from web.security import add_security_headers
from web.studies_api import bp as studies_api_bp
from web.study_pages import bp as study_pages_bp
from web.uploads import InMemoryUploadRequest, allow_study_sized_bodies

DATABASE_FILE = "lungscan.sqlite3"
OLD_DATABASE_FILE = "contact.sqlite3"  # earlier versions' name, still read if present


@dataclass
class Tasks:
    """What the web edge, the CLI and the workers call on the queue."""

    queue_study: Callable[[str], bool]
    queue_contact: Callable[[int, str], bool]
    housekeeping: Callable[[], int]  # runs now: re-queues lost jobs, purges expired studies
    pacs_poll: Callable[[], int]  # runs now: starts the studies that arrived in the PACS
    contact: ContactTasks


def create_app(test_config: dict | None = None) -> Flask:
    install_log_redaction()  # every log line of this process, from here on
    restrict_new_files()
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
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + default_database(app)
    trusted_hosts(app)
    settings = load_settings(app.config)
    app.extensions["settings"] = settings

    trust_proxies(app)
    register_sign_in(app, settings)
    register_extensions(app)
    register_services(app, settings)
    register_tasks(app, settings)
    register_blueprints(app)
    register_error_pages(app)
    register_commands(app)
    require_rules(app)
    app.after_request(add_security_headers)
    logging.basicConfig(level=settings.log_level)
    return app


def restrict_new_files() -> None:
    """Files this process creates (SQLite database and its WAL, queue file, secret key,
    instance folder) are its own user's alone: the umask drops group and other bits."""
    os.umask(os.umask(0o077) | 0o077)


def default_database(app: Flask) -> str:
    """The instance folder's SQLite file; one under its earlier name is kept in use, so
    nobody's data disappears on upgrade."""
    old = os.path.join(app.instance_path, OLD_DATABASE_FILE)
    return old if os.path.exists(old) else os.path.join(app.instance_path, DATABASE_FILE)


def trusted_hosts(app: Flask) -> None:
    """``TRUSTED_HOSTS`` from the environment may be "a.example,b.example"."""
    hosts = app.config.get("TRUSTED_HOSTS")
    if isinstance(hosts, str):
        app.config["TRUSTED_HOSTS"] = [h.strip() for h in hosts.split(",") if h.strip()] or None


def register_sign_in(app: Flask, settings: Settings) -> None:
    """The door before every route (identity, then the policy table), secure session
    cookies, and the identity provider's client when OIDC is on."""
    app.session_interface = SessionCookies()
    app.permanent_session_lifetime = settings.auth.max_hours * 3600
    register_door(app)
    if settings.auth.oidc is not None:
        register_provider(app, settings.auth.oidc)


def trust_proxies(app: Flask) -> None:
    """Take the client's address from the proxies' headers, when told how many there
    are: behind HAProxy every request would otherwise come from the balancer."""
    proxies = int(app.config.get("PROXY_FIX_X_FOR") or 0)
    if proxies > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    install_audit_trail()
    app.before_request(allow_study_sized_bodies)  # before CSRF reads the form
    csrf.init_app(app)
    limiter.init_app(app)
    # The schema comes from migrations/ (Alembic): upgraded here unless AUTO_MIGRATE is
    # off, else by `flask db upgrade` before the app starts.
    init_schema(app, db)


def inference_service(settings: InferenceSettings) -> InferenceService:
    return InferenceService(
        model_dir=settings.model_dir, max_loaded=settings.max_loaded,
        threads=settings.threads, max_pixels=settings.max_pixels, backend=settings.backend,
        onnx_cache_dir=settings.onnx_cache_dir, jit_compile=settings.jit_compile,
        concurrency=settings.concurrency, device=settings.device,
        precision=settings.precision, fp16_tolerance=settings.fp16_tolerance,
        precision_tolerance=settings.precision_tolerance)


def register_services(app: Flask, settings: Settings) -> None:
    """The inference service and the queue. Background preparation of models starts
    with the first request of a process, at gunicorn worker start (``gunicorn.conf.py``)
    or when ``flask worker`` starts, never when a command-line tool creates the app."""
    service = inference_service(settings.inference)
    app.extensions["inference"] = service
    queue = JobQueue(settings.queue, app.instance_path)
    app.extensions["job_queue"] = queue
    if settings.inference.prepare:
        app.before_request(service.start_preparation)  # cheap once started
        queue.on_worker_start.append(service.start_preparation)
    if queue.embedded:
        app.before_request(queue.start_embedded_worker)


def register_tasks(app: Flask, settings: Settings) -> None:
    """Each domain's jobs on the queue, and the loops every worker runs."""
    queue = app.extensions["job_queue"]
    pacs_tasks = register_pacs_tasks(queue, app)
    hooks = register_node_tasks(queue, app, pacs_tasks.hooks,
                                lambda study_id: study_tasks.run(study_id))
    study_tasks = register_study_tasks(queue, app, hooks=hooks)
    contact_tasks = register_contact_tasks(queue, app)

    def housekeeping() -> int:
        return study_tasks.housekeeping() + contact_tasks.sweep() + pacs_tasks.sweep()

    tasks = Tasks(queue_study=study_tasks.queue, queue_contact=contact_tasks.queue,
                  housekeeping=housekeeping, pacs_poll=partial(pacs_tasks.poll, study_tasks.run),
                  contact=contact_tasks)
    app.extensions["tasks"] = tasks
    queue.every("study-housekeeping", settings.queue.sweep_s, tasks.housekeeping)
    register_audit_tasks(queue, app, settings.audit)
    if settings.pacs.auto_rules:
        queue.every("pacs-poll", settings.pacs.poll_s, tasks.pacs_poll)


def register_blueprints(app: Flask) -> None:
    for blueprint in (auth_bp, audit_bp, pages_bp, study_pages_bp, contact_bp, api_bp,
                      studies_api_bp, pacs_api_bp, pacs_pages_bp, apidocs_bp, health_bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(inference_protocol_bp)
    for blueprint in (api_bp, studies_api_bp, pacs_api_bp, health_bp):
        csrf.exempt(blueprint)


def register_commands(app: Flask) -> None:
    for command in (contact_cli, models_cli, worker_command, pacs_cli, users_cli, tokens_cli,
                    audit_cli, dicom_cli):
        app.cli.add_command(command)
