"""Tiling as pure functions: plans, padding, batches, blending (numpy only; property tests with hypothesis)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mambaesr_edge.errors import ConfigError
from mambaesr_edge.runtime.tiling import (
    BLENDS,
    blend_tiles,
    group_outputs,
    make_batches,
    pad_image,
    plan_tiles,
    tile_window,
    tiled_apply,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def geometry(draw):
    tile = draw(st.integers(2, 24))
    overlap = draw(st.integers(0, tile // 2))
    h = draw(st.integers(1, 70))
    w = draw(st.integers(1, 70))
    return (h, w), tile, overlap


def nearest(scale: int):
    return lambda batch: batch.repeat(scale, axis=2).repeat(scale, axis=3)


def conv3x3(image_batch: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 3x3 convolution per channel (translation invariant, receptive-field radius 1)."""
    padded = np.pad(image_batch, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = image_batch.shape[-2:]
    out = np.zeros_like(image_batch, dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx] * padded[..., dy : dy + h, dx : dx + w]
    return out


@FAST
@given(geometry())
def test_plan_covers_every_pixel_with_full_size_tiles(geo):
    (h, w), tile, overlap = geo
    plan = plan_tiles((h, w), tile, overlap)
    ph, pw = plan.padded_hw
    covered = np.zeros((ph, pw), dtype=int)
    for y, x in plan.origins:
        assert 0 <= y and y + tile <= ph and 0 <= x and x + tile <= pw  # every tile has exactly the tile shape
        covered[y : y + tile, x : x + tile] += 1
    assert (covered >= 1).all()
    assert ph >= tile and pw >= tile
    for origins in (plan.ys, plan.xs):  # neighbours overlap by at least the requested overlap
        assert all(b - a <= tile - overlap for a, b in pairwise(origins))
    if h >= tile:
        assert plan.pad[:2] == (0, 0)  # padding only where the image is smaller than a tile


@FAST
@given(geometry(), st.sampled_from([1, 2, 4]), st.sampled_from(BLENDS))
def test_weights_are_positive_and_normalise_to_one(geo, scale, blend):
    (h, w), tile, overlap = geo
    plan = plan_tiles((h, w), tile, overlap)
    ones = [(i, np.ones((1, tile * scale, tile * scale), np.float32)) for i in range(plan.num_tiles)]
    out = blend_tiles(plan, ones, scale, blend, channels=1)
    assert out.shape == (1, h * scale, w * scale)
    np.testing.assert_allclose(out, 1.0, rtol=0, atol=1e-6)  # sum of normalised weights is 1 everywhere
    total = np.zeros(tuple(scale * n for n in plan.padded_hw))
    for i, (y, x) in enumerate(plan.origins):
        window = tile_window(plan, i, scale, blend)
        assert window.min() >= 0 and window.max() <= 1
        total[y * scale : (y + tile) * scale, x * scale : (x + tile) * scale] += window
    assert (total > 0).all()  # every pixel has weight, edge pixels covered by one tile included
    if blend != "uniform" and not ramps_collide(plan):  # the ramps of two neighbours already sum to one
        np.testing.assert_allclose(total, 1.0, atol=1e-9)


def ramps_collide(plan) -> bool:
    """True when some tile's overlaps with both neighbours add up to more than the tile (3 tiles cover a pixel)."""
    for origins, tile in ((plan.ys, plan.tile_hw[0]), (plan.xs, plan.tile_hw[1])):
        overlaps = [a + tile - b for a, b in pairwise(origins)]
        if any(o1 + o2 > tile for o1, o2 in pairwise(overlaps)):
            return True
    return False


@FAST
@given(geometry(), st.sampled_from([1, 2, 3, 4]), st.sampled_from(BLENDS), st.integers(1, 5))
def test_nearest_upscale_model_gives_back_the_input(geo, scale, blend, batch):
    (h, w), tile, overlap = geo
    rng = np.random.default_rng(h * 100 + w)
    image = rng.random((3, h, w), dtype=np.float32)
    out = tiled_apply(image, nearest(scale), tile_hw=tile, overlap=overlap, scale=scale, batch_size=batch, blend=blend)
    expected = image.repeat(scale, axis=1).repeat(scale, axis=2)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


@FAST
@given(
    st.integers(12, 60),
    st.integers(12, 60),
    st.integers(8, 24),
    st.sampled_from(["cosine-inner", "crop"]),
)
def test_no_seams_for_a_translation_invariant_model(h, w, tile, blend):
    """Fixed 3x3 conv (radius 1): tiled == whole image when the zero-weight margin (overlap // 4) >= radius."""
    overlap = max(4, tile // 2)  # overlap // 4 >= 1
    rng = np.random.default_rng(h * w)
    image = rng.random((3, h, w))
    kernel = rng.normal(size=(3, 3))
    whole = conv3x3(image[None], kernel)[0]
    tiled = tiled_apply(image, lambda b: conv3x3(b, kernel), tile_hw=tile, overlap=overlap, scale=1, blend=blend)
    inner = (slice(None), slice(1, -1), slice(1, -1))  # image border: reflection padding of small images differs
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=1e-5)
    if h >= tile and w >= tile:  # no padding: tiles at the border see the same zero padding as the whole image
        np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_full_cosine_ramp_lets_tile_edge_errors_in():
    """cosine weighs every tile pixel, so a conv's edge error leaks in (the reason "cosine-inner" has a margin)."""
    rng = np.random.default_rng(0)
    image = rng.random((1, 40, 40))
    kernel = rng.normal(size=(3, 3))
    whole = conv3x3(image[None], kernel)[0]
    tiled = tiled_apply(image, lambda b: conv3x3(b, kernel), tile_hw=16, overlap=8, scale=1, blend="cosine")
    assert np.abs(tiled - whole).max() > 1e-3


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (2, 2), (3, 1), (5, 63)])
def test_tiny_images_are_padded_by_repeated_reflection(hw):
    plan = plan_tiles(hw, 64, 16)
    image = np.arange(3 * hw[0] * hw[1], dtype=np.float32).reshape(3, *hw)
    padded = pad_image(image, plan)
    assert padded.shape == (3, 64, 64)
    top, _, left, _ = plan.pad
    np.testing.assert_array_equal(padded[:, top : top + hw[0], left : left + hw[1]], image)
    assert set(np.unique(padded)) <= set(np.unique(image))  # only mirrored copies of real pixels


def test_two_images_in_one_batch_are_never_mixed_up():
    rng = np.random.default_rng(1)
    a = rng.random((3, 30, 21), dtype=np.float32)
    b = rng.random((3, 17, 40), dtype=np.float32) + 10.0  # different values and a different shape
    plans = {0: plan_tiles(a.shape[1:], 12, 4), 1: plan_tiles(b.shape[1:], 12, 4)}
    images = {0: a, 1: b}
    items = [(i, pad_image(images[i], plans[i]), plans[i]) for i in (0, 1)]
    collected: dict[int, list] = {0: [], 1: []}
    mixed_batches = 0
    for batch in make_batches(items, batch_size=5):
        ids = {ref.image_id for ref in batch.refs}
        mixed_batches += len(ids) > 1
        outputs = nearest(2)(batch.tiles)
        for image_id, pairs in group_outputs(batch.refs, outputs).items():
            collected[image_id].extend(pairs)
    assert mixed_batches >= 1  # the test really puts tiles of both images into one batch
    for i in (0, 1):
        out = blend_tiles(plans[i], collected[i], 2)
        np.testing.assert_allclose(out, images[i].repeat(2, 1).repeat(2, 2), atol=2e-6)


def test_blend_rejects_missing_or_duplicate_tiles():
    plan = plan_tiles((20, 20), 8, 2)
    tiles = [(i, np.zeros((3, 8, 8), np.float32)) for i in range(plan.num_tiles)]
    with pytest.raises(ValueError, match="missing"):
        blend_tiles(plan, tiles[:-1], 1)
    with pytest.raises(ValueError, match="twice"):
        blend_tiles(plan, tiles + tiles[:1], 1)


def test_whole_image_single_tile_is_passed_through_untouched():
    image = np.random.default_rng(2).random((3, 9, 11), dtype=np.float32)
    out = tiled_apply(image, lambda b: b * 3.0, tile_hw=(9, 11), overlap=0, scale=1)
    np.testing.assert_array_equal(out, image * 3.0)


@pytest.mark.parametrize("tile,overlap", [(0, 0), (8, 5), (8, -1)])
def test_invalid_tile_settings_are_config_errors(tile, overlap):
    with pytest.raises(ConfigError):
        plan_tiles((10, 10), tile, overlap)


def test_empty_image_is_a_config_error():
    with pytest.raises(ConfigError, match="empty"):
        plan_tiles((0, 5), 8, 2)


# ----------------------------------------------------------------------------- issue 8: what the properties above leave out


@st.composite
def rect_geometry(draw):
    """Non-square tiles (a static engine's input need not be square), any image size, overlap up to half the tile."""
    th, tw = draw(st.integers(2, 24)), draw(st.integers(2, 24))
    overlap = draw(st.integers(0, min(th, tw) // 2))
    return (draw(st.integers(1, 60)), draw(st.integers(1, 60))), (th, tw), overlap


@FAST
@given(rect_geometry(), st.sampled_from([1, 3]), st.sampled_from(BLENDS))
def test_rectangular_tiles_cover_every_pixel_and_weights_sum_to_one(geo, scale, blend):
    (h, w), (th, tw), overlap = geo
    plan = plan_tiles((h, w), (th, tw), overlap)
    ph, pw = plan.padded_hw
    covered = np.zeros((ph, pw), dtype=int)
    for y, x in plan.origins:
        assert 0 <= y <= ph - th and 0 <= x <= pw - tw
        covered[y : y + th, x : x + tw] += 1
    top, _, left, _ = plan.pad
    assert (covered[top : top + h, left : left + w] >= 1).all()  # every image pixel is in some tile
    ones = [(i, np.ones((1, th * scale, tw * scale), np.float32)) for i in range(plan.num_tiles)]
    out = blend_tiles(plan, ones, scale, blend, channels=1)
    assert out.shape == (1, h * scale, w * scale)
    np.testing.assert_allclose(out, 1.0, rtol=0, atol=1e-6)


from mambaesr_edge.runtime.backends import BackendInfo  # noqa: E402


class NearestBackend:
    """A Backend (docs/interfaces.md) whose model is a nearest-neighbour x2: the exact answer is known."""

    info = BackendInfo(name="nearest", scale=2)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return batch.repeat(2, axis=2).repeat(2, axis=3)

    def synchronize(self) -> None:
        pass


@FAST
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 24), st.data())
def test_upscaler_any_image_tile_and_overlap_below_the_tile(h, w, tile, data):
    """Through the public Upscaler: overlaps above half the tile are reduced at start-up, never refused or wrong."""
    from mambaesr_edge.runtime import Upscaler

    overlap = data.draw(st.integers(0, tile - 1))
    blend = data.draw(st.sampled_from(BLENDS))
    up = Upscaler(NearestBackend(), tile=tile, overlap=overlap, blend=blend, free_bytes=1 << 30)
    image = np.random.default_rng(h * 41 + w).integers(0, 256, (h, w, 3)).astype(np.uint8)
    out = up(image)
    assert out.shape == (2 * h, 2 * w, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))
