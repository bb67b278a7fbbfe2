"""Device-side tiling (runtime/device_tiling.py): the same result as the host numpy path, for every blend and size,
directly and through the Upscaler (the torch backend uses it; a host-only wrapper of the same backend does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime import Upscaler
from mambaesr_edge.runtime.backends.torch import TorchBackend
from mambaesr_edge.runtime.device_tiling import pad_tensor, tiled_apply_tensor
from mambaesr_edge.runtime.errors import NumericalError
from mambaesr_edge.runtime.frames import postprocess, preprocess
from mambaesr_edge.runtime.infer import on_device
from mambaesr_edge.runtime.tiling import BLENDS, axis_windows, pad_image, plan_tiles, tile_window, tiled_apply

GB = 2**30
TOL = 1e-5

# (image hw, tile, overlap, batch): smaller than a tile (1 px, one axis), non-square tiles, odd sizes, no overlap
CASES = [
    ((1, 1), 8, 2, 3),
    ((5, 37), (8, 12), 3, 4),
    ((33, 21), (16, 10), 4, 5),
    ((40, 40), 16, 8, 7),
    ((17, 9), 8, 0, 2),
    ((23, 31), 23, 5, 1),
]


class HostOnly:
    """The same torch backend without ``run_tensor``: forces the host numpy path (the reference)."""

    def __init__(self, backend: TorchBackend) -> None:
        self.inner = backend
        self.info = backend.info.replace(tensor_io=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.run(batch)

    def synchronize(self) -> None:
        self.inner.synchronize()


class OomAboveBatch(TorchBackend):
    """Raises torch's CUDA out-of-memory error for batches larger than ``limit`` (on any device)."""

    limit = 1

    def run_tensor(self, x):
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return super().run_tensor(x)


class BrokenFp16:
    """A torch backend that says fp16 and returns NaN (the fp16 overflow symptom), on any device."""

    def __init__(self, backend: TorchBackend) -> None:
        self.inner = backend
        self.info = backend.info.replace(precision="fp16")

    def run_tensor(self, x):
        with torch.inference_mode():
            out = self.inner.run_tensor(x).clone()  # (N, 3, s*h, s*w)
            out[:, :, 0, 0] = float("nan")
        return out

    def synchronize(self) -> None:
        pass


@pytest.fixture(scope="module")
def model() -> MambaSR:
    torch.manual_seed(0)
    return MambaSR(get_preset("test"), scan_impl="chunked").eval()


@pytest.fixture(scope="module")
def backend(model) -> TorchBackend:
    return TorchBackend(model)


def image_chw(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((3, h, w), dtype=np.float32)


def image_hwc(h: int, w: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, size=(h, w, 3)).astype(dtype)


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("hw, tile, overlap, batch", CASES)
def test_device_tiling_matches_the_numpy_path(backend, hw, tile, overlap, batch, blend):
    image = image_chw(*hw, seed=hw[0] * 100 + hw[1])
    expected = tiled_apply(image, backend.run, tile_hw=tile, overlap=overlap, scale=backend.info.scale, batch_size=batch, blend=blend)
    plan = plan_tiles(hw, tile, overlap)
    out = tiled_apply_tensor(torch.from_numpy(image), backend.run_tensor, plan, scale=backend.info.scale, blend=blend, batch_size=batch)
    assert out.dtype == torch.float32 and tuple(out.shape) == expected.shape == (3, hw[0] * 4, hw[1] * 4)
    assert np.abs(out.numpy() - expected).max() < TOL


@pytest.mark.parametrize("hw, tile", [((1, 1), 16), ((2, 3), 16), ((3, 40), (16, 12)), ((15, 2), 9), ((20, 20), 8)])
def test_pad_tensor_is_pad_image(hw, tile):
    image = image_chw(*hw)
    plan = plan_tiles(hw, tile, 2)
    np.testing.assert_array_equal(pad_tensor(torch.from_numpy(image), plan).numpy(), pad_image(image, plan))


@pytest.mark.parametrize("blend", BLENDS)
def test_axis_windows_are_the_factors_of_tile_window(blend):
    plan = plan_tiles((45, 70), (16, 20), 6)
    wy, wx = axis_windows(plan, 3, blend)
    assert wy.shape == (len(plan.ys), 48) and wx.shape == (len(plan.xs), 60)
    for index in range(plan.num_tiles):
        row, col = divmod(index, len(plan.xs))
        np.testing.assert_array_equal(wy[row][:, None] * wx[col][None, :], tile_window(plan, index, 3, blend))


def test_the_torch_backend_takes_the_device_path(backend):
    assert on_device(backend) and not on_device(HostOnly(backend))


@pytest.mark.parametrize("blend", BLENDS)
def test_upscaler_end_to_end_matches_the_host_path(backend, blend):
    settings = dict(tile=16, overlap=4, batch=3, blend=blend, free_bytes=GB)
    device, host = Upscaler(backend, **settings), Upscaler(HostOnly(backend), **settings)
    for hw in [(1, 1), (7, 30), (29, 19)]:
        rgb = image_chw(*hw, seed=hw[1])
        assert np.abs(device.upscale_chw(rgb) - host.upscale_chw(rgb)).max() < TOL
        image = image_hwc(*hw, seed=hw[0])
        out = device(image)
        assert out.dtype == np.uint8 and out.shape == (hw[0] * 4, hw[1] * 4, 3)
        np.testing.assert_array_equal(out, host(image))  # CPU: the float results are bit-identical


@pytest.mark.parametrize("kind", ["hw", "hw1", "hw4", "uint16", "float32", "float64", "bgr"])
def test_every_image_kind_is_converted_on_the_device_as_on_the_host(backend, kind):
    rgb = image_hwc(9, 11, seed=3)
    image = {
        "hw": rgb[..., 0],
        "hw1": rgb[..., :1],
        "hw4": np.concatenate([rgb, rgb[..., :1]], axis=2),
        "uint16": image_hwc(9, 11, seed=3, dtype=np.uint16),
        "float32": rgb.astype(np.float32) / 255,
        "float64": rgb / 255.0,
        "bgr": rgb,
    }[kind]
    order = "bgr" if kind == "bgr" else "rgb"
    settings = dict(tile=8, overlap=2, batch=4, channel_order=order, free_bytes=GB)
    out, expected = Upscaler(backend, **settings)(image), Upscaler(HostOnly(backend), **settings)(image)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32, np.float64])
def test_postprocess_of_a_tensor_equals_postprocess_of_the_array(dtype):
    sr = np.random.default_rng(5).uniform(-0.2, 1.2, (3, 6, 10)).astype(np.float32)
    sr[0, 0, :6] = (np.arange(6, dtype=np.float32) + 0.5) / 255  # rounding ties: half to even on both sides
    image = np.zeros((3, 5, 3), dtype=dtype)  # only its layout and dtype matter here
    for layout_image in (image, image[..., 0], image[..., :1]):
        prepared = preprocess(layout_image)
        for order in ("rgb", "bgr"):
            expected = postprocess(sr, prepared, 2, order)
            out = postprocess(torch.from_numpy(sr), prepared, 2, order)
            assert out.dtype == expected.dtype and out.shape == expected.shape
            np.testing.assert_array_equal(out, expected)


def test_out_of_memory_on_the_device_shrinks_the_batch_and_retries(model, backend):
    oom = OomAboveBatch(model)
    up = Upscaler(oom, tile=16, overlap=4, batch=4, free_bytes=GB)
    image = image_hwc(30, 26, seed=7)
    decisions = []
    out = up(image, decisions=decisions)
    assert [d.action for d in decisions] == ["batch 4 -> 2", "batch 2 -> 1"] and all(d.stage == "oom" for d in decisions)
    np.testing.assert_array_equal(out, Upscaler(HostOnly(backend), tile=16, overlap=4, batch=1, free_bytes=GB)(image))
    assert up.settings.batch == 4  # the call adapted; the shared object did not change


@pytest.mark.parametrize("fallback_kind", ["torch", "host-only"])
def test_fp16_nan_on_the_device_falls_back_to_fp32(backend, fallback_kind):
    broken = BrokenFp16(backend)
    fallback = backend if fallback_kind == "torch" else HostOnly(backend)
    up = Upscaler(broken, tile=16, overlap=4, batch=2, fallback=fallback, free_bytes=GB)
    image = image_hwc(20, 20, seed=8)
    decisions = []
    out = up(image, decisions=decisions)
    assert decisions and all(d.stage == "fp16" for d in decisions)
    np.testing.assert_array_equal(out, Upscaler(HostOnly(backend), tile=16, overlap=4, batch=2, free_bytes=GB)(image))
    with pytest.raises(NumericalError):
        Upscaler(broken, tile=16, overlap=4, batch=2, free_bytes=GB)(image)  # no fallback


def test_stream_on_the_device_matches_single_calls(backend):
    up = Upscaler(backend, tile=16, overlap=4, batch=2, free_bytes=GB)
    frames = [image_hwc(18, 22, seed=i) for i in range(5)]
    for frame, out in zip(frames, up.stream(frames, queue_size=1), strict=True):
        np.testing.assert_array_equal(out, up(frame))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_device_path_matches_the_host_path(model, precision):
    cuda = TorchBackend(model, device="cuda", precision=precision)
    settings = dict(tile=32, overlap=8, batch=16, free_bytes=GB)
    device, host = Upscaler(cuda, **settings), Upscaler(HostOnly(cuda), **settings)
    rgb = image_chw(90, 130, seed=9)
    assert np.abs(device.upscale_chw(rgb) - host.upscale_chw(rgb)).max() < (TOL if precision == "fp32" else 1e-3)
    image = image_hwc(90, 130, seed=10)
    assert np.abs(device(image).astype(int) - host(image).astype(int)).max() <= 1
