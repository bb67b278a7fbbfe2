"""The network: parameter counts, presets, scan orders, scan implementations agree."""

from __future__ import annotations

import pytest
import torch

from mambaesr_edge.errors import ConfigError
from mambaesr_edge.model import MambaSR, count_parameters
from mambaesr_edge.orders import order_permutation
from mambaesr_edge.presets import PRESETS, ModelConfig, get_preset


def test_parameter_counts_as_measured():
    assert count_parameters(MambaSR(get_preset("dvmsr"))) == 424_428  # DVMSR's released weights
    assert count_parameters(MambaSR(get_preset("student"))) == 141_008  # not the seed paper's "370K"
    assert count_parameters(MambaSR(get_preset("teacher"))) == 650_988
    assert count_parameters(MambaSR(get_preset("dvmsr-g1"))) == 151_368  # the shipped default's network
    assert count_parameters(MambaSR(get_preset("dvmsr-g2"))) == 242_388
    assert count_parameters(MambaSR(get_preset("test"))) < 10_000


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_for_every_scale_and_odd_sizes(scale):
    model = MambaSR(get_preset("test", scale=scale)).eval()
    for h, w in [(1, 1), (5, 7), (16, 9)]:
        out = model(torch.rand(2, 3, h, w), scan_impl="chunked")
        assert out.shape == (2, 3, scale * h, scale * w)


@pytest.mark.parametrize(
    "orders",
    [("raster",), ("raster", "raster_rev"), ("raster", "column", "raster_rev", "column_rev"), ("diagonal", "spiral_rev")],
)
def test_scan_impls_agree_for_every_order(orders):
    torch.manual_seed(0)
    model = MambaSR(get_preset("test", scan_orders=orders, block_residual=True)).eval()
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        ref = model(x, scan_impl="reference")
        ours = model(x, scan_impl="chunked")
    assert torch.allclose(ref, ours, atol=1e-5)


def test_directions_share_weights_and_change_the_output():
    torch.manual_seed(0)
    one = MambaSR(get_preset("test"))
    two = MambaSR(get_preset("test", scan_orders=("raster", "raster_rev")))
    two.load_state_dict(one.state_dict())  # same parameter names and shapes
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        assert not torch.allclose(one(x, scan_impl="chunked"), two(x, scan_impl="chunked"))


@pytest.mark.parametrize("order", ["raster", "column", "diagonal", "spiral", "spiral_rev"])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (4, 4), (7, 2)])
def test_orders_are_permutations(order, hw):
    perm, inverse = order_permutation(order, *hw)
    assert sorted(perm.tolist()) == list(range(hw[0] * hw[1]))
    assert torch.equal(perm[inverse], torch.arange(hw[0] * hw[1]))


def test_spiral_and_diagonal_orders_on_a_3x3_grid():
    assert order_permutation("spiral", 3, 3)[0].tolist() == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    assert order_permutation("diagonal", 3, 3)[0].tolist() == [0, 1, 3, 2, 4, 6, 5, 7, 8]
    assert order_permutation("column", 2, 3)[0].tolist() == [0, 3, 1, 4, 2, 5]


def test_config_validation_and_json_round_trip():
    cfg = get_preset("student", scan_orders=("raster", "column_rev"))
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="scale"):
        ModelConfig(scale=5)
    with pytest.raises(ConfigError, match="unknown scan order"):
        ModelConfig(scan_orders=("zigzag",))
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="unknown model config fields"):
        ModelConfig.from_dict({"embed_dim": 8, "colour": "red"})
    assert set(PRESETS) == {"dvmsr", "teacher", "student", "dvmsr-g1", "dvmsr-g2", "test"}


def test_channels_last_layout_gives_the_same_network(monkeypatch):
    """The fused CUDA path keeps images channels-last (tokens and images are views of one another); forced on the CPU
    here, with the plain kernels, it must give the NCHW path's output, returned NCHW-contiguous."""
    import mambaesr_edge.model as model_module

    torch.manual_seed(0)
    model = MambaSR(get_preset("dvmsr-g1"), scan_impl="chunked").eval()
    x = torch.rand(2, 3, 9, 13)
    with torch.no_grad():
        plain = model(x)
        monkeypatch.setattr(model_module, "_channels_last", lambda x, impl: True)
        nhwc = model(x)
    torch.testing.assert_close(nhwc, plain, rtol=1e-5, atol=1e-5)
    assert nhwc.is_contiguous()
    tokens = torch.rand(2, 9 * 13, 60)
    image = model_module._tokens_to_image(tokens, 9, 13, True)  # (B, C, H, W) in NHWC memory
    assert image.is_contiguous(memory_format=torch.channels_last) and image.data_ptr() == tokens.data_ptr()
    assert torch.equal(image, model_module._tokens_to_image(tokens, 9, 13))
    back = model_module._image_to_tokens(image, True)
    assert back.data_ptr() == tokens.data_ptr() and torch.equal(back, tokens)
