"""The stream's three stages on a CUDA GPU: upload, compute and download on their own CUDA streams, overlapped.

``Upscaler.stream`` uses ``CudaFramePipe`` for a torch backend on CUDA (``runtime/stream.py`` still runs one thread
per stage and keeps the order); elsewhere the host path is unchanged. For frame n+1 the pre thread copies the
uint8 HxWx3 frame into a pinned host buffer and starts its upload on the upload stream; the infer thread waits for
that upload (an event, on the GPU: the host never blocks), converts it to float32 RGB on the GPU
(``frames.unit_tensor``), runs frame n's tiles and blend (``infer.upscale``) and the clamp/round/uint8 conversion
(``frames.colour_tensor``) on the compute stream; the post thread waits (on the GPU) for frame n-1's result and
copies the uint8 HR image into a pinned buffer on the download stream, then hands a numpy copy to the consumer.
So the copies of one frame overlap the network of the next, and only uint8 crosses the bus (1.5 MB up and 24.9 MB
down for 960x540 -> 3840x2160).

Other frames (uint16, float, grayscale, RGBA) take ``frames.preprocess`` on the host as before, run on the compute
stream, and are converted and copied back with ``frames.postprocess`` on the download stream. Results are the
same as the host path: the uint8 -> float32 division, the model and the blend, the clamp/round are the same
operations (tests/test_cuda_stream.py compares them on the GPU).

Memory across streams: a tensor made on one stream and used on another is marked with ``record_stream`` so the
caching allocator does not hand its memory out again before the other stream is done with it; a pinned buffer is
reused only after the event of its last copy has completed. Each ``CudaFramePipe`` belongs to one stream (its
buffers and CUDA streams are that stream's state); the pre thread alone uses the upload pool, the post thread
alone the download pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .adapt import Decision, TileSettings
from .frames import Prepared, colour_tensor, postprocess, preprocess, unit_tensor

__all__ = ["CudaFramePipe", "DeviceFrame", "PinnedPool", "device_path"]

_UINT8 = np.dtype(np.uint8)


def device_path(frame: np.ndarray) -> bool:
    """Whether a frame is converted on the GPU: uint8 HxWx3 (what cameras and decoders give), not empty."""
    return frame.dtype == _UINT8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] > 0 and frame.shape[1] > 0


@dataclass(frozen=True)
class DeviceFrame:
    """A uint8 (H, W, 3) frame on its way to the GPU: ``data`` is written on the upload stream, ``ready`` marks the end."""

    data: torch.Tensor
    ready: torch.cuda.Event


@dataclass(frozen=True)
class _Done:
    """A frame's result on the compute stream, ``done`` recorded after it: a uint8 HR image (``prepared`` None) or the
    float32 (3, s*H, s*W) output of a host-prepared frame (then converted by ``postprocess``)."""

    result: torch.Tensor
    done: torch.cuda.Event
    prepared: Prepared | None


class PinnedPool:
    """A ring of ``size`` pinned host buffers; a slot is handed out again only once its last copy's event completed."""

    def __init__(self, size: int) -> None:
        self._slots: list[tuple[torch.Tensor, torch.cuda.Event] | None] = [None] * max(1, size)
        self._next = 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.cuda.Event]:
        """A pinned buffer of ``shape`` and a fresh event to record after the copy that uses it."""
        index = self._next
        self._next = (index + 1) % len(self._slots)
        slot = self._slots[index]
        if slot is not None:
            slot[1].synchronize()  # its previous copy (usually long done)
        if slot is None or tuple(slot[0].shape) != tuple(shape) or slot[0].dtype != dtype:
            buffer = torch.empty(shape, dtype=dtype, pin_memory=True)
        else:
            buffer = slot[0]
        event = torch.cuda.Event()
        self._slots[index] = (buffer, event)
        return buffer, event


class CudaFramePipe:
    """prepare / infer / finish callbacks for ``FrameStream`` on one CUDA device (see the module docstring).

    ``run(image, settings, index, decisions) -> (out, settings used)``: the upscale of a float32 (3, H, W) tensor
    on the device (``infer.upscale`` with the Upscaler's backend), called on the compute stream.
    """

    def __init__(self, device: str, channel_order: str, scale: int, run: Callable, *, buffers: int = 3) -> None:
        self.device = torch.device(device)
        self.channel_order = channel_order
        self.scale = scale
        self._run = run
        self.upload = torch.cuda.Stream(self.device)
        self.compute = torch.cuda.Stream(self.device)
        self.download = torch.cuda.Stream(self.device)
        self._up_pool = PinnedPool(buffers)
        self._down_pool = PinnedPool(buffers)

    def prepare(self, frame: object) -> DeviceFrame | Prepared:
        """Pre thread: uint8 HxWx3 -> pinned buffer -> upload started; anything else -> ``preprocess`` on the host."""
        arr = np.asarray(frame)
        if not device_path(arr):
            return preprocess(arr, self.channel_order)
        pinned, event = self._up_pool.take(arr.shape, torch.uint8)
        pinned.numpy()[...] = arr
        with torch.cuda.stream(self.upload):
            data = torch.empty(arr.shape, dtype=torch.uint8, device=self.device)  # (H, W, 3)
            data.copy_(pinned, non_blocking=True)
            event.record(self.upload)
        return DeviceFrame(data, event)

    def infer(self, payload: DeviceFrame | Prepared, settings: TileSettings, index: int, decisions: list[Decision]):
        """Infer thread: everything of one frame on the compute stream; returns (``_Done``, settings used)."""
        with torch.cuda.stream(self.compute):
            if isinstance(payload, DeviceFrame):
                self.compute.wait_event(payload.ready)  # the GPU waits for the upload, the host does not
                payload.data.record_stream(self.compute)
                rgb = unit_tensor(payload.data, self.channel_order)  # (3, H, W) float32
                out, used = self._run(rgb, settings, index, decisions)  # (3, s*H, s*W) float32
                result, prepared = colour_tensor(out, "hw3", _UINT8, self.channel_order), None  # (s*H, s*W, 3) uint8
            else:
                out, used = self._run(payload.rgb, settings, index, decisions)
                result, prepared = out, payload
            done = torch.cuda.Event()
            done.record(self.compute)
        return _Done(result, done, prepared), used

    def finish(self, item: _Done) -> np.ndarray:
        """Post thread: wait (on the GPU) for the frame, copy it back on the download stream, return a numpy image."""
        with torch.cuda.stream(self.download):
            self.download.wait_event(item.done)
            item.result.record_stream(self.download)
            if item.prepared is not None:  # host-prepared frame: postprocess's conversion and copy on this stream
                return postprocess(item.result, item.prepared, self.scale, self.channel_order)
            pinned, event = self._down_pool.take(tuple(item.result.shape), item.result.dtype)
            pinned.copy_(item.result, non_blocking=True)
            event.record(self.download)
        event.synchronize()
        return pinned.numpy().copy()
