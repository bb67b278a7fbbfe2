"""Issue 8, long runs: the short version of benchmarks/stream_soak.py (10,000 frames, RSS). Here: what a stream
keeps between frames does not grow with the number of frames (traced Python/NumPy memory, decisions, threads)."""

from __future__ import annotations

import logging
import threading
import tracemalloc

import numpy as np
from test_runtime_fakes import FakeBackend, nearest

from mambaesr_edge.runtime import Upscaler

GB = 2**30
OUT_BYTES = 128 * 128 * 3  # one uint8 output frame (32x32 in, x4)


def test_three_hundred_frames_keep_memory_flat():
    up = Upscaler(FakeBackend(scale=4), tile=0, free_bytes=GB)
    pool = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(8)]
    threads_before = threading.active_count()
    traced = {}
    tracemalloc.start()
    try:
        with up.stream(pool[i % 8] for i in range(300)) as stream:
            for i, out in enumerate(stream, start=1):
                np.testing.assert_array_equal(out, nearest(pool[(i - 1) % 8], 4))
                if i in (100, 300):
                    traced[i] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # keeping every output would add 200 x 49 KB = 9.8 MB; frames in flight (bounded queues) are well under this
    assert traced[300] - traced[100] < 25 * OUT_BYTES, traced
    assert stream.decisions == [] and stream.dropped == []
    assert threading.active_count() == threads_before  # the pipeline's threads have ended


def test_a_decision_taken_on_every_frame_is_kept_once(caplog):
    """An fp16 model that overflows on every frame: each frame is re-run in fp32, the stream keeps one Decision."""
    broken = FakeBackend(scale=2, precision="fp16", failure="nan")
    up = Upscaler(broken, tile=0, fallback=FakeBackend(scale=2), free_bytes=GB)
    frames = [np.full((8, 8, 3), 100, np.uint8)] * 300
    with caplog.at_level(logging.ERROR), up.stream(frames) as stream:
        assert sum(1 for _ in stream) == 300
    assert len(stream.decisions) == 1 and stream.decisions[0].stage == "fp16"
    assert stream.decision_counts == {("fp16", "re-ran a batch in fp32", "fp16 output was nan"): 300}
