"""Issue 16: GPU defaults, uint8 <-> float on the device, bf16, and the overlapped CUDA stream pipeline.

CPU tests cover the pure parts (the GPU default's batch rule with a given bytes-per-pixel figure, the device
conversions on CPU tensors, tensors into ``infer.upscale``); the ``gpu`` tests run the CUDA pipeline against the
plain path (single calls through the host-prepared route) and Set5 through the CUDA path against the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime import Upscaler
from mambaesr_edge.runtime.adapt import (
    GPU_MAX_BATCH,
    GPU_SAFETY,
    GPU_TILE,
    GPU_WHOLE_MAX,
    choose_settings,
    gpu_batch,
    gpu_whole_side,
)
from mambaesr_edge.runtime.backends.torch import TorchBackend
from mambaesr_edge.runtime.errors import RuntimeConfigError
from mambaesr_edge.runtime.frames import _colour, colour_tensor, preprocess, unit_tensor
from mambaesr_edge.runtime.infer import upscale

GB = 2**30
KB_PER_PX = 4096.0  # a made-up measured figure: 4 KiB per LR pixel


def image_hwc(h: int, w: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, size=(h, w, 3)).astype(dtype)


@pytest.fixture(scope="module")
def model() -> MambaSR:
    torch.manual_seed(0)
    return MambaSR(get_preset("test"), scan_impl="chunked").eval()


# ------------------------------------------------------------------------------------------ GPU defaults (pure)
def test_gpu_batch_is_the_largest_power_of_two_that_fits():
    per_tile = GPU_SAFETY * KB_PER_PX * GPU_TILE * GPU_TILE
    assert gpu_batch(KB_PER_PX, None) == GPU_MAX_BATCH
    assert gpu_batch(KB_PER_PX, int(per_tile * 1000)) == GPU_MAX_BATCH
    assert gpu_batch(KB_PER_PX, int(per_tile * 37)) == 32
    assert gpu_batch(KB_PER_PX, int(per_tile)) == 1
    assert gpu_batch(KB_PER_PX, int(per_tile) - 1) == 0


def test_gpu_default_picks_the_gpu_tile_and_a_batch_from_the_measured_figure():
    decisions = []
    per_tile = GPU_SAFETY * KB_PER_PX * GPU_TILE * GPU_TILE
    settings = choose_settings(free_bytes=int(2 * per_tile * 20), bytes_per_pixel=KB_PER_PX, decisions=decisions)
    assert settings.tile == (GPU_TILE, GPU_TILE) and settings.batch == 16 and settings.overlap == 16
    assert any("GPU default" in d.reason and "batch 16" in d.action for d in decisions)
    big = choose_settings(free_bytes=140 * GB, bytes_per_pixel=KB_PER_PX)
    assert big.tile == (GPU_TILE, GPU_TILE) and big.batch == GPU_MAX_BATCH


def test_gpu_default_yields_to_what_was_asked_and_to_tiny_memory():
    asked = choose_settings(tile=64, free_bytes=140 * GB, bytes_per_pixel=KB_PER_PX)
    assert asked.tile == (64, 64) and asked.batch == 1  # an explicit tile: the old rule, batch 1
    assert choose_settings(free_bytes=140 * GB, batch=8, bytes_per_pixel=KB_PER_PX).batch == 8
    tiny = choose_settings(free_bytes=2**20, bytes_per_pixel=KB_PER_PX)  # not one GPU tile fits: the estimate decides
    assert tiny == choose_settings(free_bytes=2**20)
    assert choose_settings(free_bytes=GB) == choose_settings(free_bytes=GB, bytes_per_pixel=None)


def test_gpu_whole_side_is_the_largest_gpu_tile_multiple_that_fits():
    def cost(side: int) -> float:
        return GPU_SAFETY * KB_PER_PX * side * side

    assert gpu_whole_side(KB_PER_PX, None) == GPU_WHOLE_MAX
    assert gpu_whole_side(KB_PER_PX, int(cost(GPU_WHOLE_MAX))) == GPU_WHOLE_MAX
    assert gpu_whole_side(KB_PER_PX, int(cost(1000))) == 7 * GPU_TILE  # 896 fits, 1024 does not
    assert gpu_whole_side(KB_PER_PX, int(cost(GPU_TILE))) == GPU_TILE
    assert gpu_whole_side(KB_PER_PX, int(cost(GPU_TILE)) - 1) == 0


def test_whole_frames_where_the_backend_splits_long_sequences():
    decisions = []
    side = 7 * GPU_TILE
    free = int(2 * GPU_SAFETY * KB_PER_PX * side * side) + 1  # half of it is the budget
    settings = choose_settings(free_bytes=free, bytes_per_pixel=KB_PER_PX, whole_frames=True, decisions=decisions)
    assert settings.tile == (side, side) and settings.batch == 1 and settings.overlap == 16
    assert any(f"whole frames up to {side}x{side}" in d.action and "splits long sequences" in d.reason for d in decisions)
    # asked values win; no room for one GPU tile: the tile rule (and the estimate) decide as without whole_frames
    assert choose_settings(tile=64, free_bytes=free, bytes_per_pixel=KB_PER_PX, whole_frames=True).tile == (64, 64)
    assert choose_settings(free_bytes=free, batch=4, bytes_per_pixel=KB_PER_PX, whole_frames=True).batch == 4
    tiny = choose_settings(free_bytes=2**20, bytes_per_pixel=KB_PER_PX, whole_frames=True)
    assert tiny == choose_settings(free_bytes=2**20, bytes_per_pixel=KB_PER_PX)


def test_whole_frames_only_for_the_native_scan(model):
    """The torch backend says long_sequences only where its scan is the native kernel on CUDA."""
    assert TorchBackend(model).info.long_sequences is False  # CPU: chunked/numpy scans
    if torch.cuda.is_available():
        assert TorchBackend(model, device="cuda", scan_impl="triton").info.long_sequences is False
        assert TorchBackend(model, device="cuda", scan_impl="cuda").info.long_sequences is True


def test_cpu_upscaler_keeps_the_cpu_rule(model):
    """No measurement and no GPU default on the CPU: the settings are exactly what choose_settings gave before."""
    up = Upscaler(TorchBackend(model), free_bytes=GB)
    info = up.backend.info
    expected = choose_settings(precision="fp32", free_bytes=GB, model_dims={"d_inner": info.config.d_inner,
                               "d_state": info.config.d_state, "scale": info.scale})  # fmt: skip
    assert up.settings == expected


def test_bf16_needs_cuda(model):
    with pytest.raises(RuntimeConfigError, match="bf16 with the torch backend needs CUDA"):
        TorchBackend(model, precision="bf16")
    with pytest.raises(RuntimeConfigError, match="fp32, fp16 or bf16"):
        TorchBackend(model, precision="int8")


# ------------------------------------------------------------------------------------------ device conversions
@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_unit_tensor_is_preprocess(order):
    frame = image_hwc(7, 11, seed=3)
    np.testing.assert_array_equal(unit_tensor(torch.from_numpy(frame), order).numpy(), preprocess(frame, order).rgb)


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_colour_tensor_is_the_host_conversion(order):
    sr = np.random.default_rng(4).normal(0.5, 0.4, (3, 12, 20)).astype(np.float32)  # out of range too: clamped
    sr[0, 0, :4] = [0.5 / 255, 1.5 / 255, 2.5 / 255, 0.0]  # ties round half to even, as np.rint
    out = colour_tensor(torch.from_numpy(sr), "hw3", np.dtype(np.uint8), order)
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), _colour(sr, "hw3", np.dtype(np.uint8), order))


def test_upscale_takes_a_tensor_already_on_the_device(model):
    backend = TorchBackend(model)
    up = Upscaler(backend, tile=16, overlap=4, batch=3, free_bytes=GB)
    rgb = preprocess(image_hwc(20, 30, seed=5)).rgb
    from_numpy, _ = upscale(backend, rgb, up.settings)
    from_tensor, _ = upscale(backend, torch.from_numpy(rgb), up.settings)
    np.testing.assert_array_equal(from_tensor.numpy(), from_numpy.numpy())


# ------------------------------------------------------------------------------------------ on the GPU
def _gpu_upscalers(model, precision="fp32", **settings):
    cuda = TorchBackend(model, device="cuda", precision=precision, scan_impl="auto")
    fallback = cuda.with_precision("fp32") if precision != "fp32" else None
    return Upscaler(cuda, fallback=fallback, **settings)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """uint8 images from the same device computation: equal but for rare +-1 (atomics-free kernels may still pick
    different algorithms per call)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


@pytest.mark.gpu
def test_measured_bytes_per_pixel_and_the_gpu_default(model):
    from mambaesr_edge.runtime.device_tiling import measure_bytes_per_pixel

    cuda = TorchBackend(model, device="cuda")
    per_px = measure_bytes_per_pixel(cuda.run_tensor, "cuda")
    assert 3 * 4 * (1 + 16) <= per_px < 1e6  # at least the input and x4 output, fp32
    up = Upscaler(cuda)  # the native scan splits long sequences: whole frames up to a measured side, one per call
    assert cuda.info.long_sequences
    side = up.settings.tile[0]
    assert up.settings.tile == (side, side) and side % GPU_TILE == 0 and up.settings.batch == 1
    assert any("GPU default where the scan splits long sequences" in d.reason for d in up.startup_decisions)
    tiled = Upscaler(TorchBackend(model, device="cuda", scan_impl="triton"))  # Triton: GPU_TILE tiles in batches
    assert not tiled.backend.info.long_sequences
    assert tiled.settings.tile == (GPU_TILE, GPU_TILE) and tiled.settings.batch >= 1
    assert any(d.reason.startswith("GPU default:") for d in tiled.startup_decisions)


@pytest.mark.gpu
@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_cuda_stream_matches_single_calls_in_order(model, order):
    up = _gpu_upscalers(model, tile=32, overlap=8, batch=4, channel_order=order)
    frames = [image_hwc(40 + i, 70 - i, seed=i) for i in range(7)]
    outs = list(up.stream(frames, queue_size=2, indexed=True))
    assert [i for i, _ in outs] == list(range(7))
    for frame, (_, out) in zip(frames, outs, strict=True):
        _close(out, up(frame))
    rgb = unit_tensor(torch.from_numpy(frames[0]).cuda(), order).cpu().numpy()
    np.testing.assert_array_equal(rgb, preprocess(frames[0], order).rgb)  # the GPU's division is numpy's


@pytest.mark.gpu
def test_cuda_stream_takes_every_frame_kind(model):
    """uint8 HxWx3 goes the device route; uint16, float, grayscale and RGBA the host-prepared one, interleaved."""
    up = _gpu_upscalers(model, tile=32, overlap=8, batch=4)
    rng = np.random.default_rng(7)
    frames = [image_hwc(30, 20, seed=1), image_hwc(30, 20, seed=2, dtype=np.uint16), rng.random((25, 33, 3), dtype=np.float32),
              image_hwc(30, 20, seed=3)[..., 0], np.dstack([image_hwc(30, 20, seed=4), image_hwc(30, 20, seed=5)[..., :1]]),
              image_hwc(31, 21, seed=6)]
    for frame, out in zip(frames, up.stream(frames), strict=True):
        expected = up(frame)
        assert out.dtype == expected.dtype and out.shape == expected.shape
        if out.dtype == np.uint8:
            _close(out, expected)
        else:
            assert np.abs(out.astype(np.float64) - expected.astype(np.float64)).max() <= (1 if out.dtype == np.uint16 else 1e-5)


@pytest.mark.gpu
def test_cuda_stream_with_drops_and_a_target_rate_keeps_order(model):
    up = _gpu_upscalers(model, tile=32, overlap=8, batch=4)
    frames = [image_hwc(64, 96, seed=i) for i in range(30)]
    stream = up.stream(frames, target_fps=10_000, allow_drop=True, indexed=True)
    got = [i for i, _ in stream]
    assert got == sorted(got) and set(got) | set(stream.dropped) == set(range(30)) and not set(got) & set(stream.dropped)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_stream_is_close_to_fp32(model, precision):
    fp32 = _gpu_upscalers(model, tile=32, overlap=8, batch=4)
    low = _gpu_upscalers(model, precision, tile=32, overlap=8, batch=4)
    frames = [image_hwc(48, 64, seed=i) for i in range(3)]
    for a, b in zip(fp32.stream(frames), low.stream(frames), strict=True):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 64, (precision, diff.mean(), diff.max())


@pytest.mark.gpu
def test_pinned_pool_reuses_a_slot_after_its_copy():
    from mambaesr_edge.runtime.cuda_stream import PinnedPool

    pool = PinnedPool(2)
    a, ev_a = pool.take((4, 5), torch.uint8)
    ev_a.record()
    b, ev_b = pool.take((4, 5), torch.uint8)
    ev_b.record()
    again, _ = pool.take((4, 5), torch.uint8)
    assert a.is_pinned() and again.data_ptr() == a.data_ptr() and b.data_ptr() != a.data_ptr()
    other, _ = pool.take((2, 3), torch.uint8)  # another shape: a new buffer in that slot
    assert tuple(other.shape) == (2, 3)


@pytest.mark.gpu
@pytest.mark.data
@pytest.mark.parametrize("precision, tolerance_db", [("fp32", 0.005), ("fp16", 0.02), ("bf16", 0.02)])
@pytest.mark.parametrize("scan", ["auto", "cuda"])
def test_set5_through_the_cuda_stream_matches_the_cpu(benchmark_dir, precision, tolerance_db, scan):
    from mambaesr_edge.datasets import load_pairs
    from mambaesr_edge.evaluate import evaluate_pairs

    pairs = list(load_pairs(benchmark_dir / "Set5", 4))
    cpu = Upscaler.from_path(None, backend="torch", device="cpu")
    cuda = Upscaler.from_path(None, backend="torch", device="cuda", precision=precision, scan_impl=scan)
    by_id = {id(p.lr): out for p, out in zip(pairs, cuda.stream([p.lr for p in pairs]), strict=True)}
    on_gpu = evaluate_pairs(lambda lr: by_id[id(lr)], pairs, name="Set5", scale=4)
    on_cpu = evaluate_pairs(cpu, pairs, name="Set5", scale=4)
    assert abs(on_gpu.psnr - on_cpu.psnr) <= tolerance_db, (precision, scan, on_gpu.psnr, on_cpu.psnr)
