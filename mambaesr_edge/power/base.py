"""One interface for every power sampler: start(), stop() -> samples, usable as a context manager.

A sampler measures on a background thread and keeps timestamped `Sample`s (time.monotonic seconds, the clock the
bench uses for its windows). `start()` opens the source in the caller's thread, so a missing tool or library raises
there, with a hint; a failure later (the tool dies mid-run) ends the thread, is kept in `error` and logged, and the
samples taken so far are still returned by `stop()`. Every `start()` begins a fresh run: nothing carries over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import DependencyMissingError, MambaESRError

log = logging.getLogger(__name__)

__all__ = ["PollingSampler", "PowerSampler", "PowerSamplerError", "Sample", "SamplerUnavailableError"]


class PowerSamplerError(MambaESRError):
    """A power sampler could not start or was used wrongly."""


class SamplerUnavailableError(DependencyMissingError):
    """The tool or library a sampler needs is not on this machine."""


@dataclass(frozen=True)
class Sample:
    """One power reading. Power in milliwatts (current values, not running averages); None when unknown."""

    t: float  # time.monotonic() seconds when the reading was taken
    total_mw: float | None
    rails: Mapping[str, float] = field(default_factory=dict)  # rail name -> mW
    gpu_clock_mhz: float | None = None
    gpu_util_pct: float | None = None


class PowerSampler:
    """Base class. Subclasses implement `_open` (caller's thread), `_loop` (sampler thread), `_interrupt`, `_close`."""

    name: ClassVar[str] = "base"
    default_interval_s: ClassVar[float] = 0.1
    available: ClassVar[bool] = True  # False only for the sampler that measures nothing

    def __init__(self, interval_s: float | None = None) -> None:
        interval = self.default_interval_s if interval_s is None else float(interval_s)
        if not interval > 0:
            raise PowerSamplerError(f"sampling interval must be > 0 s, got {interval_s}", hint="e.g. 0.1 (100 ms)")
        self.interval_s = interval
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._error: str | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_samples: list[Sample] = []

    # -- public API -------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    @property
    def error(self) -> str | None:
        """Why sampling ended early in the current/last run (None when it ran until stop())."""
        with self._lock:
            return self._error

    @property
    def samples(self) -> list[Sample]:
        """A copy of the samples so far (while running) or of the last run (after stop)."""
        with self._lock:
            return list(self._samples) if self._thread is not None else list(self._last_samples)

    def describe(self) -> dict[str, object]:
        """What this sampler measures, for reports."""
        return {"name": self.name, "interval_s": self.interval_s}

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                raise PowerSamplerError(f"{self.name} sampler is already running", hint="call stop() before start()")
            self._samples = []
            self._last_samples = []
            self._error = None
            self._stop_event = threading.Event()
        self._open()  # raises in the caller's thread (missing tool, no permission ...)
        thread = threading.Thread(target=self._run, name=f"power-{self.name}", daemon=True)
        with self._lock:
            self._thread = thread
        thread.start()

    def stop(self) -> list[Sample]:
        """Stop sampling and return this run's samples (sorted by time). Safe to call when not running."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return list(self._last_samples)
        self._stop_event.set()
        try:
            self._interrupt()
            thread.join(timeout=max(5.0, 3 * self.interval_s))
            if thread.is_alive():
                log.warning("%s sampler thread did not finish within the timeout; leaving it as a daemon", self.name)
        finally:
            self._close()
            with self._lock:
                self._thread = None
                self._last_samples = sorted(self._samples, key=lambda s: s.t)
                self._samples = []
        return list(self._last_samples)

    def __enter__(self) -> PowerSampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- for subclasses ---------------------------------------------------------------------------------------
    def _emit(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def _run(self) -> None:
        try:
            self._loop(self._stop_event)
        except Exception as exc:  # recorded for the report and logged; the run's samples stay valid
            message = f"{type(exc).__name__}: {exc}"
            log.warning("%s sampler stopped early: %s", self.name, message)
            with self._lock:
                self._error = message

    def _fail(self, message: str) -> None:
        """Record that the source ended early (without an exception)."""
        log.warning("%s sampler stopped early: %s", self.name, message)
        with self._lock:
            self._error = message

    def _open(self) -> None:
        """Open the source (caller's thread); raise a MambaESRError with a hint when it cannot."""

    def _loop(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Unblock `_loop` after stop was requested (e.g. terminate a child process)."""

    def _close(self) -> None:
        """Release what `_open` acquired (after the thread has ended)."""


class PollingSampler(PowerSampler):
    """A sampler that reads a value every `interval_s` (NVML, jtop): subclasses implement `_read()`."""

    def _loop(self, stop: threading.Event) -> None:
        next_t = time.monotonic()
        while not stop.is_set():
            self._emit(self._read())
            next_t += self.interval_s
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (slow read): re-anchor instead of bursting
                next_t = time.monotonic()
                delay = 0.0
            stop.wait(delay)

    def _read(self) -> Sample:
        raise NotImplementedError
