"""Flask extensions, created unbound and initialised in ``create_app``."""

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase

from jobs.queue import JobQueue


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)


class Inference:
    """The inference service as a Flask extension: ``init_app`` reads the config.

    The service itself (``app.extensions["inference"]``) knows nothing of Flask; this
    is the one place that builds it from configuration. Background preparation of
    models starts with the first request of a process (and at gunicorn worker start,
    see ``gunicorn.conf.py``), not when a command-line tool creates the app.
    """

    def __init__(self, app=None):
        if app is not None:
            self.init_app(app)

    def init_app(self, app) -> None:
        from inference.precision import normalize_precision, normalize_tolerance
        from inference.runners import DEVICES
        from inference.service import InferenceService

        config = app.config
        device = str(config.get("INFERENCE_DEVICE") or "cpu").strip().lower()
        if device not in DEVICES:
            raise ValueError(f"INFERENCE_DEVICE must be one of {', '.join(DEVICES)}")
        service = InferenceService(
            model_dir=config["MODEL_DIR"],
            max_loaded=int(config["MAX_LOADED_MODELS"]),
            threads=int(config["INFERENCE_THREADS"]),
            max_pixels=int(config["MAX_IMAGE_PIXELS"]),
            backend=config["INFERENCE_BACKEND"],
            onnx_cache_dir=config["ONNX_CACHE_DIR"],
            jit_compile=bool(config["INFERENCE_JIT_COMPILE"]),
            concurrency=int(config["INFERENCE_CONCURRENCY"]),
            device=device,
            precision=normalize_precision(config.get("INFERENCE_PRECISION")),
            fp16_tolerance=normalize_tolerance(config.get("FP16_TOLERANCE", 0.01)),
        )
        app.extensions["inference"] = service
        if config.get("PREPARE_MODELS"):
            @app.before_request
            def start_preparation() -> None:  # cheap once started
                service.start_preparation()

    @staticmethod
    def service():
        """The current app's service."""
        from flask import current_app

        return current_app.extensions["inference"]


inference = Inference()
job_queue = JobQueue()  # the task queue for studies (jobs/queue.py)
