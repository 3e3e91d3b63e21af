"""The model cache: at most ``max_loaded`` models loaded, an evicted one freed, one load
for concurrent first requests, and queued requests run together in one forward pass,
each answered with its own result or, when the pass fails, its error."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from inference.cache import ModelCache
from inference.runners import conversion_supported

from .backend_helpers import CARD_32, entry_for, random_batch
from .backend_helpers import converted_dir_fixture, tiny_dir_fixture  # noqa: F401 - fixtures
from .model_factory import install, tiny_model

pytestmark = pytest.mark.skipif(not conversion_supported(),
                                reason="needs onnx, onnxruntime and tf2onnx")


def test_eviction_honours_max_loaded_models_and_frees_the_model(tmp_path):
    for arch in ("vgg16", "vgg19", "inceptionv3"):
        install(tiny_model(), tmp_path, arch, "ct", CARD_32)
    cache = ModelCache(max_loaded=2, backend="keras")
    first = cache.get(entry_for(tmp_path, "ct", "vgg16"))
    gone = weakref.ref(first)
    gone_keras = weakref.ref(first.keras_model)
    del first
    cache.get(entry_for(tmp_path, "ct", "vgg19"))
    cache.get(entry_for(tmp_path, "ct", "inceptionv3"))
    assert len(cache.loaded()) == 2
    assert not cache.is_loaded(entry_for(tmp_path, "ct", "vgg16"))
    gc.collect()
    assert gone() is None and gone_keras() is None


def test_concurrent_first_requests_load_once_and_all_answer(converted_dir):
    entry = entry_for(converted_dir)
    cache = ModelCache(backend="onnx")
    barrier = threading.Barrier(8)
    outputs, errors = [], []
    batch = random_batch(n=1)

    def client():
        barrier.wait()
        try:
            outputs.append(cache.get(entry).run_batch(batch))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cache.load_counts[("ct", "vgg16")] == 1
    for output in outputs:
        np.testing.assert_allclose(output, outputs[0], atol=1e-6)


def test_queued_requests_run_together_and_each_gets_its_own_answer(converted_dir):
    loaded = ModelCache(backend="onnx").get(entry_for(converted_dir))
    batcher = loaded.batcher
    images = [random_batch(n=1, seed=seed) for seed in range(8)]
    expected = [loaded.run_batch(image) for image in images]
    assert batcher.batch_sizes == {1: 8}  # the warm-up: one pass per image
    calls = []
    real_run = batcher.run

    def counting_run(batch):
        calls.append(len(batch))
        return real_run(batch)

    batcher.run = counting_run
    outputs = [None] * 8
    barrier = threading.Barrier(8)

    def client(index):
        barrier.wait()
        outputs[index] = loaded.run_batch(images[index])

    with loaded.gate:  # hold the cores so that all eight queue up
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        while len(batcher._pending) < 8:
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join()
    assert calls == [8]  # one forward pass for the eight requests
    assert batcher.batch_sizes == {1: 8, 8: 1}
    for output, want in zip(outputs, expected):
        np.testing.assert_allclose(output, want, atol=1e-5)


def test_a_failing_forward_pass_reaches_every_waiting_request(converted_dir):
    loaded = ModelCache(backend="onnx").get(entry_for(converted_dir))

    def broken(batch):
        raise RuntimeError("out of memory")

    loaded.batcher.run = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        loaded.run_batch(random_batch(n=1))
    assert loaded.batcher._pending == []
    assert not loaded.batcher.batch_sizes  # a failed pass is not counted as a batch


def test_a_batch_that_cannot_be_formed_fails_every_waiting_request(converted_dir):
    loaded = ModelCache(backend="onnx").get(entry_for(converted_dir))
    errors = []

    def client(batch):
        try:
            loaded.run_batch(batch)
        except ValueError as exc:  # collected and asserted below
            errors.append(exc)

    odd_shapes = [random_batch(n=1), random_batch((16, 16), n=1)]
    threads = [threading.Thread(target=client, args=(batch,), daemon=True)
               for batch in odd_shapes]
    with loaded.gate:  # both queue up, then one pass is tried for the two
        for thread in threads:
            thread.start()
        while len(loaded.batcher._pending) < 2:
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request was left waiting"
    assert len(errors) == 2
    assert loaded.batcher._pending == []
