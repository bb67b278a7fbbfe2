"""Fake backends shared by the runtime tests (holds no tests): nearest-neighbour upscaling with knobs for latency, OOM, NaN."""

from __future__ import annotations

import threading
import time

import numpy as np

from mambaesr_edge.runtime.backends import BackendInfo


class FakeBackend:
    """Nearest-neighbour x``scale``; optional sleep per pixel, OOM above a tile size, fp16-style failures."""

    def __init__(
        self,
        scale: int = 2,
        *,
        input_hw: tuple[int, int] | None = None,
        max_batch: int | None = None,
        seconds_per_pixel: float = 0.0,
        oom_above_pixels: int | None = None,
        precision: str = "fp32",
        failure: str | None = None,  # "nan" or "black": every output is broken
        raise_on_call: int | None = None,  # raise RuntimeError on this call number (1-based)
    ) -> None:
        self.info = BackendInfo(name="fake", scale=scale, precision=precision, input_hw=input_hw, max_batch=max_batch)
        self.scale = scale
        self.input_hw = input_hw
        self.seconds_per_pixel = seconds_per_pixel
        self.oom_above_pixels = oom_above_pixels
        self.failure = failure
        self.raise_on_call = raise_on_call
        self._lock = threading.Lock()
        self.calls: list[tuple[int, ...]] = []  # shapes seen (test inspection only)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls.append(tuple(batch.shape))
            call = len(self.calls)
        if self.raise_on_call is not None and call == self.raise_on_call:
            raise RuntimeError("fake backend exploded")
        pixels = int(np.prod(batch.shape[0:1] + batch.shape[2:]))
        if self.oom_above_pixels is not None and pixels > self.oom_above_pixels:
            raise MemoryError(f"fake OOM: {pixels} pixels > {self.oom_above_pixels}")
        if self.input_hw is not None:
            assert tuple(batch.shape[-2:]) == self.input_hw, (batch.shape, self.input_hw)
        if self.seconds_per_pixel:
            time.sleep(pixels * self.seconds_per_pixel)
        out = batch.repeat(self.scale, axis=2).repeat(self.scale, axis=3).astype(np.float32)
        if self.failure == "nan":
            out[:, :, 0, 0] = np.nan
        elif self.failure == "black":
            out[:] = 0.0
        return out

    def synchronize(self) -> None:
        pass


def nearest(image: np.ndarray, scale: int) -> np.ndarray:
    return image.repeat(scale, axis=0).repeat(scale, axis=1)
