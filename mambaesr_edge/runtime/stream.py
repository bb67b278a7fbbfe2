"""Streaming: preprocess -> infer -> postprocess on three threads joined by bounded queues.

``FrameStream`` is an iterator over upscaled frames in input order (each stage is one thread reading one FIFO
queue, so order is kept by construction). An exception in the source or any stage stops the pipeline and is
re-raised by ``next()`` in the consumer. Closing the stream (``close()``, leaving a ``with`` block, breaking out of a
``for`` loop and dropping the stream, or garbage collection) sets a stop flag that every blocking queue operation
checks every 50 ms, then joins the threads.

With ``target_fps`` a ``LatencyController`` watches the inference latency and may lower the overlap, change the
batch, and finally turn on frame dropping: the source thread then never blocks (a full input queue loses its oldest
frame) and before each inference the infer thread takes the newest waiting frame, dropping the older ones. Frames
are never reordered; ``dropped`` lists the indices lost (appended from two threads; read it after the stream ends).
``pace=True`` releases source frames at ``target_fps`` (a video file played as if it were a live camera). Decisions
and dropped frame indices are on the stream object.

Long runs: the state kept between frames is bounded. Queues hold at most ``queue_size`` items each; a decision taken
per frame (an fp16 re-run, an out-of-memory shrink) is kept once, with its count in ``decision_counts``; the only
record that grows with the stream is ``dropped``, one int per dropped frame. benchmarks/stream_soak.py measures RSS
over 10,000 frames.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .adapt import Decision, LatencyController, TileSettings

__all__ = ["FrameStream"]

log = logging.getLogger(__name__)

_POLL_S = 0.05


@dataclass(frozen=True)
class _Item:
    index: int
    payload: object


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_END = object()


class _Stopped(Exception):
    """Internal: the consumer closed the stream."""


class FrameStream(Iterator):
    """Iterator of upscaled frames (or ``(index, frame)`` with ``indexed=True``). Thread-safe to close."""

    def __init__(
        self,
        frames: Iterable,
        *,
        prepare: Callable[[object], object],
        infer: Callable[[object, TileSettings, int, list[Decision]], tuple[object, TileSettings]],
        finish: Callable[[object], object],
        settings: TileSettings,
        target_fps: float | None = None,
        allow_drop: bool = True,
        max_batch: int | None = None,
        queue_size: int = 2,
        pace: bool = False,
        indexed: bool = False,
    ) -> None:
        self.decisions: list[Decision] = []
        self.decision_counts: dict[tuple[str, str, str], int] = {}  # (stage, action, reason) of per-frame decisions
        self.dropped: list[int] = []
        self._stop = threading.Event()
        self._controller = (
            LatencyController(settings, target_fps, max_batch=max_batch, decisions=self.decisions) if target_fps else None
        )
        self._settings = settings
        self._allow_drop = allow_drop
        self._pace_fps = target_fps if pace and target_fps else None
        size = max(1, queue_size)
        self._queues = [queue.Queue(size) for _ in range(4)]  # source->pre, pre->infer, infer->post, post->consumer
        q = self._queues
        self._threads = [
            threading.Thread(target=self._guard, args=(q[0], self._feed, iter(frames)), name="upscale-source", daemon=True),
            threading.Thread(target=self._guard, args=(q[1], self._stage, 0, prepare), name="upscale-pre", daemon=True),
            threading.Thread(target=self._guard, args=(q[2], self._infer_stage, infer), name="upscale-infer", daemon=True),
            threading.Thread(target=self._guard, args=(q[3], self._stage, 2, finish), name="upscale-post", daemon=True),
        ]
        self._indexed = indexed
        self._source = frames
        self._gen = self._consume()

    # ---------------------------------------------------------------- queue helpers (all honour the stop flag)
    def _put(self, q: queue.Queue, item: object) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue) -> object:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _guard(self, out: queue.Queue, body: Callable, *args: object) -> None:
        """Run a stage; forward its failure downstream (to the consumer) through ``out``; stop quietly when closed."""
        try:
            body(*args)
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            try:
                self._put(out, _Failure(exc))
            except _Stopped:
                return

    # ---------------------------------------------------------------- stages
    def _feed(self, source: Iterator) -> None:
        start = time.monotonic()
        for index, frame in enumerate(source):
            if self._pace_fps:
                delay = start + index / self._pace_fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if self._dropping():
                self._put_dropping_oldest(self._queues[0], _Item(index, frame))
            else:
                self._put(self._queues[0], _Item(index, frame))
        self._put(self._queues[0], _END)

    def _dropping(self) -> bool:
        return self._controller is not None and self._allow_drop and self._controller.dropping

    def _put_dropping_oldest(self, q: queue.Queue, item: _Item) -> None:
        """Never block the source: when the queue is full, drop its oldest frame (only the source thread puts here)."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                q.put_nowait(item)
                return
            except queue.Full:
                pass
            try:
                old = q.get_nowait()
            except queue.Empty:
                continue
            if isinstance(old, _Item):
                self.dropped.append(old.index)
                log.debug("dropped frame %d (source ahead of the model)", old.index)

    def _stage(self, position: int, fn: Callable[[object], object]) -> None:
        src, dst = self._queues[position], self._queues[position + 1]
        while True:
            item = self._get(src)
            if not isinstance(item, _Item):
                self._put(dst, item)
                return
            self._put(dst, _Item(item.index, fn(item.payload)))

    def _newest(self, item: _Item, src: queue.Queue) -> tuple[_Item, object | None]:
        """Frame dropping: skip to the newest waiting frame; a sentinel behind it is returned to handle next."""
        while True:
            try:
                nxt = src.get_nowait()
            except queue.Empty:
                return item, None
            if not isinstance(nxt, _Item):
                return item, nxt
            self.dropped.append(item.index)
            log.debug("dropped frame %d (a newer frame is waiting)", item.index)
            item = nxt

    def _infer_stage(self, infer: Callable) -> None:
        src, dst = self._queues[1], self._queues[2]
        settings = self._settings
        while True:
            item = self._get(src)
            if not isinstance(item, _Item):
                self._put(dst, item)
                return
            deferred = None
            if self._dropping():
                item, deferred = self._newest(item, src)
            if self._controller is not None:
                settings = self._controller.settings
            start = time.perf_counter()
            frame_decisions: list[Decision] = []
            result, used = infer(item.payload, settings, item.index, frame_decisions)
            self._keep(frame_decisions)
            if self._controller is not None:
                if used != settings:
                    self._controller.replace_settings(used)
                self._controller.observe(time.perf_counter() - start, item.index)
            settings = used
            self._put(dst, _Item(item.index, result))
            if deferred is not None:
                self._put(dst, deferred)
                return

    def _keep(self, decisions: list[Decision]) -> None:
        """Add a frame's decisions to ``self.decisions``, each distinct one once (an fp16 model that overflows on
        every frame would otherwise add one per frame, forever); ``decision_counts`` counts every occurrence."""
        for decision in decisions:
            key = (decision.stage, decision.action, decision.reason)
            self.decision_counts[key] = self.decision_counts.get(key, 0) + 1
            if self.decision_counts[key] == 1:
                self.decisions.append(decision)

    # ---------------------------------------------------------------- consumer side
    def _consume(self) -> Iterator:
        for thread in self._threads:
            thread.start()
        try:
            while True:
                item = self._queues[3].get()
                if isinstance(item, _Failure):
                    raise item.error
                if not isinstance(item, _Item):
                    return
                yield (item.index, item.payload) if self._indexed else item.payload
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10.0)
                if thread.is_alive():
                    log.warning("stream thread %s did not stop within 10 s", thread.name)
        if not self._threads[0].is_alive() and hasattr(self._source, "close"):
            self._source.close()

    def __next__(self) -> object:
        return next(self._gen)

    def __iter__(self) -> FrameStream:
        return self

    def close(self) -> None:
        """Stop the pipeline threads (idempotent)."""
        self._gen.close()
        if not self._stop.is_set():  # closed before the first next(): threads never started
            self._stop.set()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            log.debug("error closing a FrameStream during garbage collection", exc_info=True)
