"""Hardware-aware adaptation: start-up choice, shrink on OOM, frame-rate control (slowed-down fake backend)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_runtime_fakes import FakeBackend, nearest

from mambaesr_edge.runtime import Upscaler
from mambaesr_edge.runtime.adapt import (
    ConfiguredDefaults,
    LatencyController,
    TileSettings,
    choose_settings,
    estimate_tile_bytes,
    free_memory_bytes,
    is_out_of_memory,
)
from mambaesr_edge.runtime.errors import BackendOutOfMemoryError

MIB = 2**20


def jetson_profile(**changes):
    """A real DeviceProfile (the shipped orin-nano's: TensorRT, fp16) with some fields changed."""
    from mambaesr_edge.profiles import load_profile

    return replace(load_profile("orin-nano"), name="fake-jetson", **changes)


def frame(seed: int, h: int = 24, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_free_memory_is_measured_on_cpu():
    free = free_memory_bytes("cpu")
    assert free is not None and free > 16 * MIB


def test_requested_values_win_then_profile_then_memory():
    decisions = []
    s = choose_settings(tile=32, overlap=4, batch=2, free_bytes=8 * 2**30, decisions=decisions)
    assert s == TileSettings((32, 32), 4, 2, "fp32", "cosine") and decisions == []
    profile = ConfiguredDefaults("device profile fake-jetson", tile=48, overlap=8, batch=4, memory_budget_mib=4096)
    s = choose_settings(defaults=profile, free_bytes=8 * 2**30, decisions=decisions)
    assert s.tile == (48, 48) and s.overlap == 8 and s.batch == 4
    assert "profile" in decisions[-1].reason
    s = choose_settings(tile=0)
    assert s.tile is None and s.overlap == 0  # whole image


def test_tile_and_batch_follow_free_memory():
    roomy = choose_settings(free_bytes=64 * 2**30)
    tight = choose_settings(free_bytes=2 * estimate_tile_bytes((48, 48), 1) + 1)
    assert roomy.tile == (256, 256)
    assert tight.tile == (48, 48)
    decisions = []
    profile = ConfiguredDefaults("device profile fake-jetson", batch=8, tile=64, memory_budget_mib=100_000)
    shrunk = choose_settings(defaults=profile, free_bytes=2 * estimate_tile_bytes((64, 64), 2), decisions=decisions)
    assert shrunk.batch == 2 and sum("batch" in d.action for d in decisions) == 2


def test_overlap_too_large_for_the_tile_is_reduced_and_reported():
    decisions = []
    s = choose_settings(tile=16, overlap=16, decisions=decisions)
    assert s.overlap == 4 and "overlap" in decisions[0].action
    assert "a quarter of the tile" in decisions[0].reason  # says what it does (it used to say "half")


def test_oom_errors_are_recognised():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"))
    OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})  # stands in for torch.cuda.OutOfMemoryError
    assert is_out_of_memory(OutOfMemoryError("CUDA"))
    assert not is_out_of_memory(ValueError("bad shape"))


def test_out_of_memory_shrinks_batch_then_tile_and_still_gives_the_right_image():
    backend = FakeBackend(scale=2, oom_above_pixels=20 * 20)
    up = Upscaler(backend, tile=64, overlap=8, batch=4, free_bytes=2**30)
    decisions = []
    image = frame(0, 50, 45)
    np.testing.assert_array_equal(up(image, decisions=decisions), nearest(image, 2))
    actions = [d.action for d in decisions]
    assert actions == ["batch 4 -> 2", "batch 2 -> 1", "tile 64 -> tile 32", "tile 32 -> tile 16"]
    assert all(d.stage == "oom" for d in decisions)
    assert up.settings.batch == 4  # the call adapted; the shared object did not change


def test_out_of_memory_with_nothing_left_to_shrink_is_a_named_error():
    up = Upscaler(FakeBackend(scale=2, oom_above_pixels=1, input_hw=(8, 8)), tile=8, overlap=2, free_bytes=2**30)
    with pytest.raises(BackendOutOfMemoryError, match="even at batch 1"):
        up(frame(1, 8, 8))


def test_latency_controller_steps_overlap_batch_then_drops():
    decisions = []
    ctl = LatencyController(TileSettings((32, 32), 8, 1), target_fps=100, patience=2, decisions=decisions)
    for i in range(40):
        ctl.observe(0.05, i)  # 50 ms per frame against a 10 ms budget
    actions = [d.action for d in decisions]
    assert actions[:2] == ["overlap 8 -> 4", "overlap 4 -> 2"]
    assert "batch 1 -> 2" in actions and "batch 2 -> 1" in actions  # tried, did not help, reverted
    assert actions[-1].startswith("drop frames") and ctl.dropping
    assert ctl.settings.overlap == 2 and ctl.settings.batch == 1


def test_latency_controller_leaves_a_fast_stream_alone():
    ctl = LatencyController(TileSettings((32, 32), 8, 1), target_fps=10)
    for i in range(20):
        ctl.observe(0.01, i)
    assert ctl.decisions == [] and not ctl.dropping


@pytest.mark.slow
def test_slow_backend_stream_adapts_and_drops_oldest_frames_in_order():
    """Sleep proportional to pixels: ~90 ms per 32x32 frame (9 tiles) against a 25 fps (40 ms) paced source."""
    backend = FakeBackend(scale=2, seconds_per_pixel=40e-6)
    up = Upscaler(backend, tile=16, overlap=4, free_bytes=2**30)
    frames = [frame(i, 32, 32) for i in range(40)]
    stream = up.stream(frames, target_fps=25, pace=True, indexed=True)
    results = list(stream)
    indices = [i for i, _ in results]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)  # never reordered or repeated
    assert sorted(stream.dropped + indices) == list(range(40))
    assert len(stream.dropped) >= 15  # ~90 ms per frame at 40 ms per frame: about half must go
    assert indices[-1] == 39  # the newest frame is kept, older pending ones dropped
    stages = [d.action for d in stream.decisions]
    assert stages[0].startswith("overlap") and any(a.startswith("drop frames") for a in stages)
    for i, out in results:
        np.testing.assert_array_equal(out, nearest(frames[i], 2))


def test_stream_without_target_fps_never_drops():
    up = Upscaler(FakeBackend(scale=2, seconds_per_pixel=1e-6), tile=16, overlap=4, free_bytes=2**30)
    stream = up.stream([frame(i) for i in range(12)], indexed=True)
    assert [i for i, _ in stream] == list(range(12)) and stream.dropped == [] and stream.decisions == []


def test_from_profile_object_sets_tiling_and_runs_weights_in_torch(tmp_path):
    import torch

    from mambaesr_edge.checkpoint import save_weights
    from mambaesr_edge.model import MambaSR
    from mambaesr_edge.presets import get_preset

    torch.manual_seed(0)
    weights = save_weights(MambaSR(get_preset("test")), tmp_path / "w.safetensors")
    profile = jetson_profile(tile=24, overlap=6, batch=2)
    up = Upscaler.from_profile(profile, weights, free_bytes=2**30)
    # weights are not an export: the profile's tiling; the engine is the one the resolver picks for weights
    # (runtime/source.py): numpy on the CPU in fp32, torch on CUDA
    assert up.backend.info.name == ("torch" if torch.cuda.is_available() else "numpy")
    assert up.settings.tile == (24, 24) and up.settings.overlap == 6 and up.settings.batch == 2
    assert up.settings.precision == ("fp16" if torch.cuda.is_available() else "fp32")  # fp16 needs CUDA
    assert up(frame(3, 30, 20)).shape == (120, 80, 3)


def test_from_profile_by_name_when_profiles_exist(tmp_path):
    profiles = pytest.importorskip("mambaesr_edge.profiles", reason="device profiles not installed")
    from mambaesr_edge.checkpoint import save_weights
    from mambaesr_edge.model import MambaSR
    from mambaesr_edge.presets import get_preset

    weights = save_weights(MambaSR(get_preset("test")), tmp_path / "w.safetensors")
    name = profiles.list_profiles()[0]
    name = getattr(name, "name", name)
    up = Upscaler.from_profile(name, weights)
    expected = profiles.load_profile(name)
    assert up.settings.tile == (expected.tile, expected.tile) and up.settings.overlap == expected.overlap


def test_configured_defaults_come_from_the_typed_profile():
    from mambaesr_edge.runtime.upscaler import configured_defaults

    profile = jetson_profile(tile=24, overlap=6, batch=2, memory_budget_mib=512)
    assert configured_defaults(profile) == ConfiguredDefaults("device profile fake-jetson", 24, 6, 2, "fp16", 512)
    assert configured_defaults(None) is None
    decisions = []
    s = choose_settings(defaults=configured_defaults(profile), free_bytes=2**40, decisions=decisions)
    assert s.tile == (24, 24) and s.batch == 2 and "from device profile fake-jetson" in decisions[0].reason
