"""Device profiles: every shipped file loads; bad files give one clear ConfigError; the CLI lists and shows them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mambaesr_edge.cli import main
from mambaesr_edge.errors import ConfigError
from mambaesr_edge.profiles import DeviceProfile, list_profiles, load_profile, profile_from_dict, profiles_dir

EXPECTED = {"orin-nano", "orin-nx", "agx-orin", "xavier-nx", "x86-cpu", "desktop-gpu"}


def _toml(raw: dict) -> str:
    lines = []
    for key, value in raw.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, (list, tuple)):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _good() -> dict:
    return load_profile("orin-nano").to_dict()


def test_every_shipped_profile_loads():
    assert set(list_profiles()) >= EXPECTED
    for name in list_profiles():
        profile = load_profile(name)
        assert isinstance(profile, DeviceProfile)
        assert profile.name == name
        assert profile.overlap * 2 < profile.tile


def test_profile_fields_match_the_interface_doc():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "interfaces.md").read_text()
    for field in dataclasses.fields(DeviceProfile):
        assert f"`{field.name}`" in doc, field.name


def test_orin_nano_facts():
    p = load_profile("orin-nano")
    assert (p.compute_capability, p.dla, p.tensorrt, p.jetpack, p.cuda) == ("8.7", False, "10.3", "6.2", "12.6")
    assert p.power_modes == ("7W", "15W", "25W", "MAXN_SUPER")
    assert p.peak_bandwidth_gbs == 68.0 and "102" in p.description
    assert p.power_sampler == "tegrastats" and p.backend == "tensorrt" and p.precision == "fp16"
    x = load_profile("xavier-nx")
    assert x.tensorrt.startswith("8.5") and x.compute_capability == "7.2" and x.dla
    cpu = load_profile("x86-cpu")
    assert cpu.backend == "onnxruntime-cpu" and cpu.precision == "fp32" and cpu.power_sampler == "none"
    assert load_profile("desktop-gpu").power_sampler == "nvml"


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_profile("orin-nano").tile = 32  # type: ignore[misc]


def test_load_by_path(tmp_path):
    path = tmp_path / "my-board.toml"
    path.write_text(_toml({**_good(), "name": "my-board", "tile": 48}))
    assert load_profile(path).tile == 48
    assert load_profile(str(path)).name == "my-board"


def test_unknown_device_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        load_profile("orin-nanoo")
    assert "orin-nano" in info.value.hint and "unknown device" in info.value.message


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"tile": 4}, "tile 4 is below the minimum"),
        ({"overlap": 32}, "overlap 32 must be less than half the tile"),
        ({"overlap": -1}, "overlap -1 is negative"),
        ({"peak_bandwidth_gbs": -5.0}, "peak_bandwidth_gbs -5.0 must be a positive"),
        ({"backend": "openvino"}, "backend 'openvino' is not one of"),
        ({"power_sampler": "multimeter"}, "power_sampler 'multimeter' is not one of"),
        ({"precision": "int8"}, "precision 'int8' is not one of"),
        ({"builder_optimization_level": 7}, "builder_optimization_level 7 is outside 0-5"),
        ({"batch": 0}, "batch 0 must be >= 1"),
        ({"compute_capability": "sm_87"}, "compute_capability 'sm_87'"),
        ({"tile": "64"}, "tile must be an integer, got str"),
        ({"dla": 1}, "dla must be true or false, got int"),
        ({"tile": True}, "tile must be an integer, got bool"),
        ({"power_modes": "7W"}, "power_modes must be a list of strings"),
        ({"backend": "onnxruntime-cpu", "precision": "fp16"}, "onnxruntime-cpu runs fp32 only"),
        ({"workspace_mib": 0}, "workspace_mib must be > 0 for the tensorrt backend"),
        ({"gpu_clock_mhz": 625}, "unknown field(s) gpu_clock_mhz"),
    ],
)
def test_invalid_values_are_named(change, needle):
    with pytest.raises(ConfigError) as info:
        profile_from_dict({**_good(), **change}, source="test")
    assert needle in info.value.message


def test_missing_field_is_named(tmp_path):
    raw = _good()
    del raw["peak_tflops_fp16"]
    path = tmp_path / "broken.toml"
    path.write_text(_toml(raw))
    with pytest.raises(ConfigError, match="missing field\\(s\\) peak_tflops_fp16"):
        load_profile(path)


def test_several_problems_reported_together():
    with pytest.raises(ConfigError) as info:
        profile_from_dict({**_good(), "tile": 4, "batch": 0}, source="test")
    assert "tile 4" in info.value.message and "batch 0" in info.value.message


def test_bad_toml_syntax(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = orin\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "nope.toml")


def test_int_peaks_accepted_as_floats():
    p = profile_from_dict({**_good(), "peak_bandwidth_gbs": 68}, source="test")
    assert isinstance(p.peak_bandwidth_gbs, float)


def test_shipped_files_cite_sources():
    for path in profiles_dir().glob("*.toml"):
        assert path.read_text().lstrip().startswith("#"), f"{path.name} has no comment naming its sources"


def test_cli_lists_and_shows(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out
    assert main(["profiles", "show", "orin-nano"]) == 0
    out = capsys.readouterr().out
    assert "MAXN_SUPER" in out and "tegrastats" in out and "8.7" in out


def test_cli_unknown_profile_exits_2(capsys):
    assert main(["profiles", "show", "jetson-tx9"]) == 2
    err = capsys.readouterr().err
    assert "unknown device" in err and "orin-nano" in err
