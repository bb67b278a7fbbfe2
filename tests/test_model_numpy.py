"""The numpy forward (the CPU default backend for raster-order weights) against the torch model and the scan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mambaesr_edge.checkpoint import load_model, save_weights
from mambaesr_edge.model import MambaSR
from mambaesr_edge.model_numpy import NumpyMambaSR, read_numpy_weights, selective_scan_tokens, supports
from mambaesr_edge.presets import get_preset
from mambaesr_edge.resources import default_weights_path
from mambaesr_edge.runtime.backends import open_backend
from mambaesr_edge.runtime.backends.numpy import NumpyBackend, numpy_config
from mambaesr_edge.scan import selective_scan

REPO = Path(__file__).resolve().parents[1]


def _torch_forward(model: MambaSR, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("length", [1, 5, 16, 17, 255, 256, 257, 2049, 5000])  # around the chunk and block sizes
def test_scan_matches_the_sequential_reference(length):
    g = torch.Generator().manual_seed(length)
    dim, n_state = 6, 4
    u = torch.randn(1, dim, length, generator=g, dtype=torch.float64)
    delta = torch.nn.functional.softplus(torch.randn(1, dim, length, generator=g, dtype=torch.float64) - 1)
    A = -torch.exp(torch.randn(dim, n_state, generator=g, dtype=torch.float64))
    B, C = (torch.randn(1, n_state, length, generator=g, dtype=torch.float64) for _ in range(2))
    truth = selective_scan(u, delta, A, B, C, impl="reference")[0].T.numpy()  # (L, dim)
    ours = selective_scan_tokens(*(np.ascontiguousarray(t, dtype=np.float32) for t in (u[0].T, delta[0].T, A, B[0].T, C[0].T)))
    assert ours.shape == (length, dim) and np.isfinite(ours).all()
    assert np.linalg.norm(ours - truth) <= 1e-5 * np.linalg.norm(truth)


def test_default_model_matches_torch():
    model, _ = load_model(None, scan_impl="chunked")
    arrays, config = read_numpy_weights(default_weights_path())
    x = np.random.default_rng(0).random((1, 3, 20, 23), dtype=np.float32)
    ours = NumpyMambaSR(config, arrays)(x)
    assert ours.shape == (1, 3, 80, 92)
    assert np.abs(ours - _torch_forward(model, x)).max() < 1e-4


@pytest.mark.parametrize("residual", [False, True])
def test_saved_weights_match_torch_across_blocks_and_threads(tmp_path, residual):
    torch.manual_seed(1)
    model = MambaSR(get_preset("test", block_residual=residual), scan_impl="chunked").eval()
    path = save_weights(model, tmp_path / "w.safetensors")
    x = np.random.default_rng(1).random((2, 3, 45, 50), dtype=np.float32)  # 2,250 tokens: nine scan blocks, the last partial
    expected = _torch_forward(model, x)
    arrays, config = read_numpy_weights(path)
    for threads in (1, 2):
        ours = NumpyMambaSR(config, arrays, threads=threads)(x)
        assert np.abs(ours - expected).max() < 1e-4


def test_open_backend_picks_numpy_on_the_cpu_unless_torch_is_asked_for(tmp_path):
    assert open_backend(None).info.name == "numpy"  # the shipped default
    model = MambaSR(get_preset("test")).eval()
    weights = save_weights(model, tmp_path / "w.safetensors")
    backend = open_backend(weights)
    assert isinstance(backend, NumpyBackend) and backend.info.scale == 4 and backend.info.config == model.config
    assert open_backend(weights, "torch").info.name == "torch"
    assert open_backend(weights, scan_impl="chunked").info.name == "torch"  # a scan implementation is a torch setting
    assert open_backend(weights, preset="test").info.name == "torch"  # torch's loader checks weights against a preset
    four_way = save_weights(MambaSR(get_preset("test", scan_orders=("raster", "column"))), tmp_path / "four.safetensors")
    assert not supports(get_preset("test", scan_orders=("raster", "column")))
    assert numpy_config(four_way, None) is None and open_backend(four_way).info.name == "torch"
    torch.save(model.state_dict(), tmp_path / "w.pth")
    assert open_backend(tmp_path / "w.pth", preset="test").info.name == "torch"


def test_upscale_of_the_default_model_never_imports_torch(tmp_path):
    from PIL import Image

    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(source)
    code = (
        "import sys\n"
        "from mambaesr_edge.cli import main\n"
        f"assert main(['upscale', {str(source)!r}, '-o', {str(tmp_path / 'out.png')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out.png").size == (40, 48)


@pytest.mark.parametrize("preset", ["test", "dvmsr", "dvmsr-g1", "student"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_expected_shapes_are_the_torch_models(preset, scale):
    from mambaesr_edge.model_numpy import expected_shapes

    config = get_preset(preset, scale=scale)
    assert expected_shapes(config) == {k: tuple(v.shape) for k, v in MambaSR(config).state_dict().items()}


def test_weights_that_do_not_fit_are_refused_as_torch_refuses_them(tmp_path):
    from safetensors.torch import save_file

    from mambaesr_edge.errors import ArchitectureMismatchError, WeightsError
    from mambaesr_edge.model_numpy import read_numpy_weights

    model = MambaSR(get_preset("test"))
    good = save_weights(model, tmp_path / "good.safetensors")
    from safetensors import safe_open

    with safe_open(str(good), framework="np") as handle:
        meta = handle.metadata()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cases = {
        "shape": ({**state, "conv_first.weight": state["conv_first.weight"][:4]}, ArchitectureMismatchError, "1 wrong shape"),
        "nan": ({**state, "conv_first.bias": torch.full_like(state["conv_first.bias"], float("nan"))}, WeightsError, "NaN"),
        "bf16": ({k: v.bfloat16() for k, v in state.items()}, WeightsError, "BF16"),
        "int8": ({**state, "conv_first.bias": state["conv_first.bias"].to(torch.int8)}, WeightsError, "I8"),
    }
    for name, (tensors, error, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
        with pytest.raises(error, match=message):
            read_numpy_weights(path)
    # the CPU default selection leaves what numpy cannot read to torch (bf16 loads there; int8 gets torch's refusal)
    assert numpy_config(tmp_path / "bf16.safetensors", None) is None
    assert numpy_config(good, None) == model.config


def test_supports_names_every_model_config_field():
    """supports() fails closed: a field ModelConfig gains must be listed (with the values this forward implements)."""
    import dataclasses

    from mambaesr_edge.model_numpy import IMPLEMENTED_FIELDS
    from mambaesr_edge.presets import ModelConfig

    assert set(IMPLEMENTED_FIELDS) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_supports_refuses_what_it_does_not_implement():
    import dataclasses

    from mambaesr_edge.errors import ArchitectureMismatchError
    from mambaesr_edge.model_numpy import unsupported
    from mambaesr_edge.presets import ModelConfig

    @dataclasses.dataclass(frozen=True)
    class NewerConfig(ModelConfig):
        gated_skip: bool = True  # a field this forward has never heard of

    base = get_preset("test")
    assert supports(base) and supports(base.replace(block_residual=True, scale=2, dt_rank=3))
    assert not supports(NewerConfig(**dataclasses.asdict(base) | {"scan_orders": ("raster",), "rgb_mean": (0.5, 0.5, 0.5)}))
    assert unsupported(base.replace(in_channels=1)) == ["in_channels=1"]
    with pytest.raises(ArchitectureMismatchError, match=r"does not implement this model's scan_orders=\('raster', 'column'\)"):
        NumpyMambaSR(base.replace(scan_orders=("raster", "column")), {})


def test_numpy_and_torch_loaders_refuse_bad_weights_with_one_message(tmp_path):
    from safetensors.torch import save_file

    from mambaesr_edge.errors import MambaESRError

    model = MambaSR(get_preset("test"))
    meta = {"mambaesr_edge.config": model.config.to_json()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cases = {
        "shape": {**state, "conv_first.weight": state["conv_first.weight"][:4]},
        "missing": {k: v for k, v in state.items() if k != "norm_f.bias"},
        "nan": {**state, "conv_first.bias": torch.full_like(state["conv_first.bias"], float("inf"))},
        "config": state,
    }
    for name, tensors in cases.items():
        path = tmp_path / f"{name}.safetensors"
        metadata = meta if name != "config" else {"mambaesr_edge.config": '{"scale": 5}'}  # an invalid stored config
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        with pytest.raises(MambaESRError) as from_torch:
            load_model(path)
        with pytest.raises(MambaESRError) as from_numpy:
            read_numpy_weights(path)
        assert type(from_torch.value) is type(from_numpy.value) and from_torch.value.message == from_numpy.value.message, name


def test_the_numpy_forward_never_imports_torch():
    code = "import sys, mambaesr_edge.model_numpy, mambaesr_edge.weights_format\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
