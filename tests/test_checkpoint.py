"""Checkpoints: DVMSR and BasicSR files load exactly; bad files give named errors; our format describes itself."""

from __future__ import annotations

import pickle

import pytest
import torch

from mambaesr_edge.checkpoint import infer_config, load_model, read_weights, save_weights
from mambaesr_edge.errors import ArchitectureMismatchError, WeightsError
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset


@pytest.mark.data
def test_both_released_dvmsr_files_load_strictly(shared_dir):
    plain, info = load_model(shared_dir / "weights/dvmsr/team07_DVMSR.pth", "dvmsr")
    assert info.source == "state_dict"
    raw = torch.load(shared_dir / "weights/dvmsr/team07_DVMSR.pth", weights_only=True)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in raw.items())
    basicsr, info = load_model(shared_dir / "weights/dvmsr/DVMSR.pth")  # config inferred from shapes
    assert info.source == "basicsr:params_ema" and basicsr.config == get_preset("dvmsr")
    _, info = load_model(shared_dir / "weights/dvmsr/DVMSR.pth", param_key="params")
    assert info.source == "basicsr:params"


def test_safetensors_round_trip_carries_the_config(tmp_path):
    model = MambaSR(get_preset("test", scale=2, scan_orders=("raster", "column")))
    path = save_weights(model, tmp_path / "m.safetensors", {"note": "hello"})
    loaded, info = load_model(path)
    assert loaded.config == model.config and info.metadata["note"] == "hello"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))


def test_module_prefix_and_inferred_config(tmp_path):
    model = MambaSR(get_preset("student"))
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    loaded, _ = load_model(tmp_path / "ddp.pth")
    assert loaded.config == get_preset("student")
    assert infer_config(model.state_dict()).scale == 4


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_weights(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="corrupt or unreadable"):
        read_weights(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(WeightsError, match="corrupt or unreadable"):
        read_weights(tmp_path / "junk.safetensors")
    good = save_weights(MambaSR(get_preset("test")), tmp_path / "t.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-100])
    with pytest.raises(WeightsError):
        read_weights(tmp_path / "cut.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("this code must never run",))


def test_pickle_that_carries_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv_first.weight": _Payload()}, handle)
    with pytest.raises(WeightsError, match=r"refused to load .* imports .*print"):
        read_weights(path)
    assert "must never run" not in capsys.readouterr().out
    torch.save({"x": _Payload()}, tmp_path / "evil_zip.pth")
    with pytest.raises(WeightsError, match=r"refused to load .* imports .*print"):
        read_weights(tmp_path / "evil_zip.pth")


def test_wrong_architecture_lists_the_keys(tmp_path):
    state = MambaSR(get_preset("test")).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["norm_f.weight"]
    state["conv_after_body.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(ArchitectureMismatchError) as info:
        load_model(tmp_path / "odd.pth", "test")
    message = str(info.value)
    assert "1 missing: norm_f.weight" in message and "1 unexpected: extra.weight" in message
    assert "conv_after_body.bias (3,) != (8,)" in message
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ArchitectureMismatchError, match="not a DVMSR-layout network"):
        load_model(tmp_path / "other.pth")
    torch.save(MambaSR(get_preset("test")).state_dict(), tmp_path / "test.pth")
    with pytest.raises(ArchitectureMismatchError, match="do not fit"):
        load_model(tmp_path / "test.pth", "student")
