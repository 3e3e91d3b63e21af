"""Gunicorn settings sized to this machine: ``gunicorn -c gunicorn.conf.py "app:create_app()"``.

One forward pass of these CNNs already keeps every core it is given busy, so the cores
are split between worker processes, never shared: ``workers x inference threads <=
cores``. Each process runs one forward pass at a time (``INFERENCE_CONCURRENCY``) and
its other request threads upload, decode and render meanwhile. Fewer, wider workers
also keep fewer copies of the models in memory; from 8 cores on, a second worker pays
off because one image no longer scales to all of them.

Override with the environment: ``WEB_CONCURRENCY`` (workers), ``GUNICORN_THREADS``,
``GUNICORN_BIND``, ``FLASK_INFERENCE_THREADS``, ``FLASK_WARM_MODELS``.
"""

import os
import threading

from audit.actions import APP_STARTED, APP_STOPPED
from audit.trail import lifecycle
from inference.runtime import available_cores  # cheap: no TensorFlow

CORES = available_cores()
CORES_PER_WORKER = 4  # where batch-1 convolutions stop scaling well on CPU

workers = int(os.environ.get("WEB_CONCURRENCY") or max(1, CORES // CORES_PER_WORKER))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or 8)
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
timeout = 120  # a cold load of the largest model plus its first request
graceful_timeout = 30
keepalive = 5
preload_app = False  # TensorFlow must not be initialised before the fork
logger_class = "web.access_log.RedactingLogger"  # no study id in the access log


def inference_threads(worker_count: int) -> int:
    """This worker's share of the cores, unless FLASK_INFERENCE_THREADS says otherwise."""
    return int(os.environ.get("FLASK_INFERENCE_THREADS") or max(1, CORES // max(1, worker_count)))


def when_ready(server):
    count = server.cfg.workers
    server.log.info("%d worker(s) x %d inference thread(s) on %d core(s), %d request "
                    "threads each", count, inference_threads(count), CORES, threads)


def post_fork(server, worker):
    """Size the worker's thread pools from the real worker count (``-w`` included).

    The app is created after this hook (no preload), so it reads these before
    TensorFlow or ONNX Runtime start their pools.
    """
    share = inference_threads(server.cfg.workers)
    os.environ["FLASK_INFERENCE_THREADS"] = str(share)
    # Libraries with their own pools (OpenCV, OpenMP) get the same share.
    os.environ.setdefault("OMP_NUM_THREADS", str(share))


def post_worker_init(worker):
    """Start preparing models, the embedded study worker, and loading ``WARM_MODELS``,
    in the background: the worker answers meanwhile."""
    app = worker.wsgi
    settings = getattr(app, "extensions", {}).get("settings")
    if settings is None:  # not this project's app
        return
    with app.app_context():
        lifecycle(APP_STARTED, "web")
    if settings.inference.prepare:
        app.extensions["inference"].start_preparation()
    queue = app.extensions["job_queue"]
    if queue.embedded:  # studies queued before a restart run now
        queue.start_embedded_worker()
    selection = settings.inference.warm
    if not selection:
        return

    def warm():
        from inference.registry import parse_model_choices
        from web.cli import warm_models

        with app.app_context():
            warm_models(app.extensions["inference"], parse_model_choices(selection),
                        echo=worker.log.info)

    threading.Thread(target=warm, name="warm-models", daemon=True).start()


def worker_exit(server, worker):
    app = worker.wsgi
    if getattr(app, "extensions", {}).get("settings") is not None:
        with app.app_context():
            lifecycle(APP_STOPPED, "web")
