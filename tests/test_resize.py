"""runtime/resize.py: the Lanczos resize behind `upscale --outscale`, held to OpenCV's INTER_LANCZOS4 (Real-ESRGAN's)."""

from __future__ import annotations

import numpy as np
import pytest

from mambaesr_edge.runtime.resize import lanczos_resize, outscale_size

SHAPES = [(37, 53, 3), (37, 53), (20, 31, 4)]
SIZES = [(74, 106), (18, 26), (55, 80), (37, 90), (100, 53)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", SHAPES, ids=["rgb", "gray", "rgba"])
def test_as_opencv_lanczos4_within_one_level(dtype, shape):
    cv2 = pytest.importorskip("cv2", reason="the comparison needs OpenCV (pip install 'mambaesr-edge[video]')")
    image = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    for size in SIZES:
        ours = lanczos_resize(image, size)
        theirs = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LANCZOS4)
        assert ours.dtype == dtype and ours.shape == theirs.shape
        difference = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.1, size


def test_constant_images_stay_constant_and_the_same_size_is_untouched():
    flat = np.full((9, 7, 3), 200, np.uint8)
    assert np.array_equal(lanczos_resize(flat, (20, 13)), np.full((20, 13, 3), 200, np.uint8))
    image = np.random.default_rng(1).random((5, 6)).astype(np.float32)
    assert lanczos_resize(image, (5, 6)) is image
    assert lanczos_resize(image, (10, 12)).dtype == np.float32


def test_integer_results_are_clipped_to_their_range():
    edge = np.zeros((8, 8), np.uint8)
    edge[:, 4:] = 255  # Lanczos rings past the step: the values are clipped, not wrapped
    out = lanczos_resize(edge, (8, 29))
    assert out.min() == 0 and out.max() == 255 and out[0, 0] == 0 and out[0, -1] == 255


def test_outscale_size_truncates_as_real_esrgan():
    assert outscale_size((12, 10), 4) == (48, 40)
    assert outscale_size((12, 10), 3.5) == (42, 35)
    assert outscale_size((3, 3), 0.1) == (1, 1)
