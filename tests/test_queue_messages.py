"""Queue messages are JSON: bytes that reach the broker can name a job of this app, but
cannot make a worker run code (Huey's default, pickle, would)."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from jobs.queue import make_huey
from jobs.serializer import UnreadableMessage

from .conftest import run_queued_jobs, testing_config
from .redis_server import needs_redis, redis_server


class RunsCode:
    """Unpickling this runs a command: what a forged pickle message would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def forged(marker) -> bytes:
    return pickle.dumps(RunsCode(marker))


def test_a_job_goes_through_the_queue_as_json(tmp_path):
    huey = make_huey(None, str(tmp_path))

    @huey.task(name="add", priority=10)
    def add(a, b):
        return a + b

    add("study-1", 3)
    raw = huey.storage.dequeue()
    message = json.loads(raw)  # plain JSON, no pickle
    assert message["name"].endswith("add") and message["args"] == ["study-1", 3]
    huey.storage.enqueue(raw, 10)
    task = huey.dequeue()
    assert (task.name, task.args, task.priority) == ("add", ("study-1", 3), 10)


def test_a_pickled_message_in_the_queue_file_is_refused_and_runs_nothing(
        tmp_path, tiny_model_dir, instance_path):
    from app import create_app

    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir)))
    huey, marker = app.extensions["job_queue"].huey, tmp_path / "code-ran"
    huey.storage.enqueue(forged(marker), 0)
    with pytest.raises(UnreadableMessage):
        huey.dequeue()
    assert not marker.exists()
    app.extensions["tasks"].queue_contact(1, "q-ticket")  # the queue still works after it
    assert run_queued_jobs(app) == 1


class TestRedis:
    pytestmark = needs_redis

    def test_a_pickled_message_pushed_into_redis_is_refused_and_runs_nothing(self, tmp_path):
        marker = tmp_path / "code-ran"
        with redis_server(tmp_path) as broker:
            huey = make_huey(broker, str(tmp_path))
            huey.storage.enqueue(forged(marker), 0)
            with pytest.raises(UnreadableMessage):
                huey.dequeue()
            assert not marker.exists()
            assert huey.pending_count() == 0
