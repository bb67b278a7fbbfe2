"""Upscaler: image kinds, channel order, thread safety, streaming, fp16 fallback."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_runtime_fakes import FakeBackend, nearest

from mambaesr_edge.errors import ImageError
from mambaesr_edge.evaluate import super_resolve
from mambaesr_edge.metrics import imresize
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime import Upscaler
from mambaesr_edge.runtime.backends.torch import TorchBackend
from mambaesr_edge.runtime.errors import NumericalError, RuntimeConfigError

GB = 2**30


@pytest.fixture(scope="module")
def test_model() -> MambaSR:
    torch.manual_seed(0)
    return MambaSR(get_preset("test"), scan_impl="chunked").eval()


@pytest.fixture(scope="module")
def torch_backend(test_model) -> TorchBackend:
    return TorchBackend(test_model)


def rgb(h: int, w: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    peak = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, peak + 1, size=(h, w, 3)).astype(dtype)


def test_whole_image_matches_super_resolve(test_model, torch_backend):
    image = rgb(13, 17)
    up = Upscaler(torch_backend, tile=0, free_bytes=GB)
    np.testing.assert_array_equal(up(image), super_resolve(test_model, image))


def test_tiled_output_is_close_to_whole_image(torch_backend):
    image = rgb(40, 36, seed=3)
    whole = Upscaler(torch_backend, tile=0, free_bytes=GB)(image).astype(int)
    tiled = Upscaler(torch_backend, tile=24, overlap=8, free_bytes=GB)(image).astype(int)
    assert tiled.shape == whole.shape == (160, 144, 3)
    assert np.abs(tiled - whole).mean() < 2.0  # a random network, random pixels: close, not equal


def test_identity_model_round_trips_every_kind_of_image():
    up = Upscaler(FakeBackend(scale=2), tile=8, overlap=2, free_bytes=GB)
    image = rgb(11, 9, seed=1)
    np.testing.assert_array_equal(up(image), nearest(image, 2))
    sixteen = rgb(7, 10, seed=2, dtype=np.uint16)
    out16 = up(sixteen)
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, nearest(sixteen, 2))  # 16-bit precision kept end to end
    gray = image[..., 0]
    assert up(gray).shape == (22, 18)
    np.testing.assert_array_equal(up(gray), nearest(gray, 2))
    np.testing.assert_array_equal(up(gray[..., None]), nearest(gray, 2)[..., None])
    floats = image.astype(np.float32) / 255
    np.testing.assert_allclose(up(floats), nearest(floats, 2), atol=1e-6)


def test_rgba_alpha_is_upscaled_with_bicubic():
    up = Upscaler(FakeBackend(scale=2), tile=0, free_bytes=GB)
    image = np.concatenate([rgb(6, 5), np.linspace(0, 255, 30).reshape(6, 5, 1).astype(np.uint8)], axis=2)
    out = up(image)
    assert out.shape == (12, 10, 4)
    np.testing.assert_array_equal(out[..., :3], nearest(image[..., :3], 2))
    expected = np.rint(np.clip(imresize(image[..., 3] / 255.0, output_shape=(12, 10)), 0, 1).astype(np.float32) * 255)
    np.testing.assert_array_equal(out[..., 3], expected.astype(np.uint8))


def test_bgr_channel_order_is_respected(torch_backend):
    image = rgb(10, 12, seed=4)
    out_rgb = Upscaler(torch_backend, tile=0, free_bytes=GB)(image)
    out_bgr = Upscaler(torch_backend, tile=0, channel_order="bgr", free_bytes=GB)(image[..., ::-1])
    np.testing.assert_array_equal(out_bgr[..., ::-1], out_rgb)
    with pytest.raises(RuntimeConfigError):
        Upscaler(torch_backend, channel_order="rgba")


@pytest.mark.parametrize("bad", [np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.int32)])
def test_bad_arrays_are_image_errors(bad):
    with pytest.raises(ImageError):
        Upscaler(FakeBackend(), tile=0, free_bytes=GB)(bad)


def test_fixed_input_shape_backend_pads_tiny_images():
    backend = FakeBackend(scale=2, input_hw=(8, 8), max_batch=2)
    up = Upscaler(backend, tile=64, overlap=2, free_bytes=GB)  # tile forced to the engine's 8x8
    assert up.settings.tile == (8, 8) and any("fixed input shape" in d.reason for d in up.startup_decisions)
    for shape in [(1, 1), (3, 20), (17, 9)]:
        image = rgb(*shape, seed=shape[0])
        np.testing.assert_array_equal(up(image), nearest(image, 2))
    assert all(call[0] <= 2 for call in backend.calls)


def test_four_threads_sharing_one_upscaler_match_serial_calls(torch_backend):
    up = Upscaler(torch_backend, tile=16, overlap=4, batch=2, free_bytes=GB)
    images = [rgb(20 + i, 18 + 2 * i, seed=i) for i in range(8)]
    serial = [up(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(up, images))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical


def test_stream_keeps_order_and_matches_single_calls():
    up = Upscaler(FakeBackend(scale=2, seconds_per_pixel=2e-6), tile=8, overlap=2, free_bytes=GB)
    frames = [rgb(12, 10, seed=i) for i in range(10)]
    out = list(up.stream(iter(frames), queue_size=1))
    assert len(out) == 10
    for frame, result in zip(frames, out, strict=True):
        np.testing.assert_array_equal(result, nearest(frame, 2))
    indexed = list(up.stream(frames, indexed=True))
    assert [i for i, _ in indexed] == list(range(10))


def test_stream_propagates_backend_errors_after_earlier_frames():
    up = Upscaler(FakeBackend(scale=2, raise_on_call=3), tile=0, free_bytes=GB)
    got = []
    with pytest.raises(RuntimeError, match="exploded"):
        for frame in up.stream([rgb(4, 4, seed=i) for i in range(6)]):
            got.append(frame)
    assert len(got) == 2  # frames before the failing one came through, in order


def test_stream_propagates_source_errors():
    def source():
        yield rgb(4, 4)
        raise ValueError("camera unplugged")

    up = Upscaler(FakeBackend(), tile=0, free_bytes=GB)
    with pytest.raises(ValueError, match="unplugged"):
        list(up.stream(source()))


def test_closing_a_stream_early_stops_its_threads():
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield rgb(6, 6)
        finally:
            closed.set()

    before = threading.active_count()
    up = Upscaler(FakeBackend(scale=2), tile=0, free_bytes=GB)
    stream = up.stream(endless())
    for count, _ in enumerate(stream):
        if count == 3:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
    assert closed.is_set()  # the source generator was closed too


def test_fp16_nan_output_falls_back_to_fp32_and_says_so():
    broken = FakeBackend(scale=2, precision="fp16", failure="nan")
    up = Upscaler(broken, tile=0, fallback=FakeBackend(scale=2), free_bytes=GB)
    decisions = []
    image = rgb(5, 6)
    np.testing.assert_array_equal(up(image, decisions=decisions), nearest(image, 2))
    assert [d.stage for d in decisions] == ["fp16"] and "nan" in decisions[0].reason


def test_fp16_black_output_without_fallback_raises():
    up = Upscaler(FakeBackend(scale=2, precision="fp16", failure="black"), tile=0, free_bytes=GB)
    with pytest.raises(NumericalError, match="black"):
        up(np.full((4, 4, 3), 128, np.uint8))
    assert up(np.zeros((4, 4, 3), np.uint8)).max() == 0  # a black input may give a black output


def test_fp32_nan_is_an_error_not_a_fallback():
    up = Upscaler(FakeBackend(scale=2, failure="nan"), tile=0, fallback=FakeBackend(scale=2), free_bytes=GB)
    with pytest.raises(NumericalError):
        up(rgb(3, 3))
