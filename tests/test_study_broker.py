"""With FLASK_BROKER_URL the jobs go through Redis to `flask worker` processes."""

from __future__ import annotations

import pytest

from .conftest import testing_config
from .model_factory import scan_like_png
from .redis_server import needs_redis, redis_server
from .study_helpers import image_fields, running_worker, submit, wait_for_study, worker_env

pytestmark = needs_redis


def test_a_worker_elsewhere_takes_the_study_through_redis(tmp_path, tiny_model_dir,
                                                          instance_path):
    from app import create_app

    with redis_server(tmp_path) as broker:
        database = tmp_path / "studies.sqlite3"
        settings = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}", "BROKER_URL": broker,
                    "EMBEDDED_WORKER": True}
        app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir), **settings))
        queue = app.extensions["job_queue"]
        assert not queue.embedded  # a broker means workers run elsewhere, not in the web
        client = app.test_client()
        images = [(f"{i}.png", scan_like_png(seed=i)) for i in range(6)]
        url = submit(client, modality="ct", model="vgg16",
                     images=image_fields(images)).get_json()["url"]
        assert queue.huey.pending_count() == 1  # the job waits in Redis
        assert client.get(url).get_json()["status"] == "queued"

        env = worker_env({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}",
                          "BROKER_URL": broker}, tiny_model_dir, tmp_path / "worker-instance")
        with running_worker(env, tmp_path / "worker.log"):
            view = wait_for_study(client, url, deadline_s=120)
        assert view["status"] == "done"
        assert view["progress"] == {"done": 6, "total": 6}
        assert queue.huey.pending_count() == 0
        log = (tmp_path / "worker.log").read_text()
        assert "redis://127.0.0.1" in log and "study " in log


def test_an_unknown_broker_scheme_is_refused_at_start(tmp_path, instance_path):
    from app import create_app

    with pytest.raises(ValueError, match="BROKER_URL"):
        create_app(testing_config(tmp_path, BROKER_URL="amqp://guest:secret@host//"))


def test_readiness_follows_the_broker(tmp_path, instance_path, tiny_model_dir):
    from app import create_app

    with redis_server(tmp_path) as broker:
        app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                        BROKER_URL=broker))
        client = app.test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["checks"]["broker"] == "ok"
    down = client.get("/readyz")  # the Redis server has stopped
    assert down.status_code == 503
    assert down.get_json()["checks"]["broker"].startswith("error: ")
    assert "redis://" not in down.get_data(as_text=True)


def test_on_redis_a_mail_job_goes_ahead_of_queued_studies(tmp_path, instance_path):
    """The Redis queue keeps priorities too (PriorityRedisHuey): a contact mail queued
    after three studies is the next job a worker takes."""
    from app import create_app

    with redis_server(tmp_path) as broker:
        app = create_app(testing_config(tmp_path, BROKER_URL=broker))
        queue = app.extensions["job_queue"]
        tasks = app.extensions["tasks"]
        for number in range(3):
            tasks.queue_study(f"study-{number}")
        tasks.queue_contact(1, "q-ticket")
        assert queue.huey.pending_count() == 4
        assert queue.huey.dequeue().name == "forward_contact"
        assert queue.huey.dequeue().name == "run_study"
