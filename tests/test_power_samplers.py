"""The real samplers against stand-ins: a `tegrastats` executable on PATH, fake `jtop` and `pynvml` modules."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import types
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_power import FAKE_TEGRASTATS, _load_fake_tegrastats, tegrastats_fixture

from mambaesr_edge.errors import ConfigError
from mambaesr_edge.power import (
    JtopSampler,
    NullSampler,
    NvmlSampler,
    PowerSamplerError,
    SamplerUnavailableError,
    TegrastatsSampler,
    parse_tegrastats_line,
    select_sampler,
)
from mambaesr_edge.profiles import load_profile

SYNTHETIC_LINES = """\
## [1]
01-02-2026 10:00:00 RAM 1/2MB GR3D_FREQ 50%@[600] VDD_IN 5000mW/5000mW VDD_SOC 900mW/900mW
01-02-2026 10:00:01 RAM 1/2MB GR3D_FREQ 60%@[600] VDD_IN 5100mW/5050mW VDD_SOC 910mW/905mW
01-02-2026 10:00:02 RAM 1/2MB GR3D_FREQ 70%@[600] VDD_IN 5200mW/5100mW VDD_SOC 920mW/910mW
"""


def install_fake_tegrastats(bin_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    """Put a `tegrastats` into ``bin_dir`` that replays the real fixture lines (or three synthetic ones), and put
    ``bin_dir`` first on PATH. Returns the file of lines it replays. Shared with the doctor's tests."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "tegrastats"
    script.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(FAKE_TEGRASTATS)!r}, run_name='__main__')\n")
    script.chmod(0o755)
    lines = tegrastats_fixture()
    if lines is None:
        lines = tmp_path / "lines.txt"
        lines.write_text(SYNTHETIC_LINES)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TEGRASTATS_LINES", str(lines))
    return lines


@pytest.fixture
def fake_tegrastats(tmp_path, monkeypatch):
    """Put a `tegrastats` that replays the real fixture lines (or three synthetic ones) first on PATH."""
    lines = install_fake_tegrastats(tmp_path / "bin", tmp_path, monkeypatch)
    return [line for _, line in _load_fake_tegrastats().read_records(lines)]


def _wait_for(sampler, count, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(sampler.samples) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_tegrastats_sampler_end_to_end(fake_tegrastats):
    sampler = TegrastatsSampler(interval_s=0.02)
    with sampler:
        _wait_for(sampler, len(fake_tegrastats) + 3)
        proc = sampler._proc
    samples = sampler.samples
    assert proc.poll() is not None, "tegrastats must be stopped"
    assert sampler.error is None
    expected = [parse_tegrastats_line(line).total_mw for line in fake_tegrastats]
    assert [s.total_mw for s in samples[: len(expected) + 3]] == (expected + expected)[: len(expected) + 3]
    assert all(a.t < b.t for a, b in pairwise(samples))
    spacing = (samples[-1].t - samples[0].t) / (len(samples) - 1)
    assert 0.015 < spacing < 0.5  # lines arrive at the requested --interval (20 ms), not in one burst
    first = parse_tegrastats_line(fake_tegrastats[0])
    assert samples[0].rails == first.rails and samples[0].gpu_util_pct == first.gpu_util_pct


def test_tegrastats_dying_mid_run_is_recorded(fake_tegrastats, monkeypatch):
    monkeypatch.setenv("FAKE_TEGRASTATS_DIE_AFTER", "3")
    sampler = TegrastatsSampler(interval_s=0.01)
    sampler.start()
    deadline = time.monotonic() + 10
    while sampler.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    samples = sampler.stop()
    assert len(samples) == 3
    assert "exited with code 3" in sampler.error and "dying as asked" in sampler.error


def test_tegrastats_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SamplerUnavailableError) as info:
        TegrastatsSampler().start()
    assert "inside containers" in info.value.hint and "--power jtop" in info.value.hint
    assert TegrastatsSampler.probe() == (False, "tegrastats is not on PATH")


# -- selection ---------------------------------------------------------------------------------------------------
@pytest.fixture
def nothing_else_present(monkeypatch):
    monkeypatch.setattr(JtopSampler, "probe", staticmethod(lambda: (False, "no jtop here")))
    monkeypatch.setattr(NvmlSampler, "probe", staticmethod(lambda: (False, "no NVML here")))


def test_select_from_profile_and_override(fake_tegrastats, nothing_else_present):
    assert isinstance(select_sampler("orin-nano"), TegrastatsSampler)
    jtop_profile = dataclasses.replace(load_profile("orin-nano"), name="x", power_sampler="jtop")
    assert isinstance(select_sampler(jtop_profile), TegrastatsSampler)  # fallback
    with pytest.raises(ConfigError, match="cannot pick a power sampler from SimpleNamespace"):
        select_sampler(SimpleNamespace(name="x", power_sampler="jtop"))  # duck-typed profiles are not read
    assert isinstance(select_sampler(None), TegrastatsSampler)
    assert isinstance(select_sampler("orin-nano", override="none"), NullSampler)
    assert isinstance(select_sampler(None, override="tegrastats", interval_s=0.5), TegrastatsSampler)
    with pytest.raises(SamplerUnavailableError):
        select_sampler("orin-nano", override="nvml")
    with pytest.raises(ConfigError):
        select_sampler(None, override="watts")


def test_select_falls_back_to_none(tmp_path, monkeypatch, nothing_else_present):
    monkeypatch.setenv("PATH", str(tmp_path))
    chosen = select_sampler("orin-nano")
    assert isinstance(chosen, NullSampler) and chosen.reason == "no sampler on this machine"
    cpu = select_sampler("x86-cpu")  # the profile names none: no probing
    assert isinstance(cpu, NullSampler) and cpu.reason == "no sampler on this machine"
    with pytest.raises(SamplerUnavailableError) as info:
        select_sampler("orin-nano", override="tegrastats")
    assert "--power jtop" in info.value.hint


# -- jtop --------------------------------------------------------------------------------------------------------
def _fake_jtop_module(*, fail_start=False):
    module = types.ModuleType("jtop")

    class JtopException(Exception):
        pass

    class FakeJtop:
        instances = []

        def __init__(self, interval=1.0):
            self.interval = interval
            self.closed = False
            FakeJtop.instances.append(self)

        def start(self):
            if fail_start:
                raise JtopException("The jtop.service is not active")

        def ok(self):
            time.sleep(self.interval)
            return not self.closed

        @property
        def power(self):
            return {"rail": {"VDD_CPU_GPU_CV": {"power": 2100, "avg": 2000, "online": True},
                             "VDD_SOC": {"power": 1200, "avg": 1100, "online": True},
                             "OFF": {"power": 99, "online": False}},
                    "tot": {"power": 6200, "avg": 6000, "name": "VDD_IN"}}

        @property
        def gpu(self):
            return {"ga10b": {"status": {"load": 87.5}, "freq": {"cur": 624750}}}

        def close(self):
            self.closed = True

    module.jtop = FakeJtop
    module.JtopException = JtopException
    return module


def test_jtop_sampler_with_fake_library(monkeypatch):
    fake = _fake_jtop_module()
    monkeypatch.setitem(sys.modules, "jtop", fake)
    sampler = JtopSampler(interval_s=0.01)
    with sampler:
        _wait_for(sampler, 3)
    sample = sampler.samples[0]
    assert sample.total_mw == 6200
    assert sample.rails == {"VDD_IN": 6200, "VDD_CPU_GPU_CV": 2100, "VDD_SOC": 1200}
    assert sample.gpu_clock_mhz == pytest.approx(624.75) and sample.gpu_util_pct == 87.5
    assert fake.jtop.instances[0].interval == 0.01 and fake.jtop.instances[0].closed


def test_jtop_missing_or_service_down(monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", None)  # import fails
    with pytest.raises(SamplerUnavailableError) as info:
        JtopSampler().start()
    assert "jetson-stats" in info.value.hint
    monkeypatch.setitem(sys.modules, "jtop", _fake_jtop_module(fail_start=True))
    with pytest.raises(PowerSamplerError, match="jtop could not connect"):
        JtopSampler().start()


# -- NVML --------------------------------------------------------------------------------------------------------
def _fake_pynvml(*, instant=True, init_error=False):
    module = types.ModuleType("pynvml")
    calls = {"shutdown": 0}

    class NVMLError(Exception):
        pass

    def nvmlInit():
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown():
        calls["shutdown"] += 1

    module.NVMLError = NVMLError
    module.NVML_CLOCK_SM = 1
    module.nvmlInit = nvmlInit
    module.nvmlShutdown = nvmlShutdown
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    module.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    module.nvmlDeviceGetPowerUsage = lambda h: 71000  # trailing 1 s average on recent GPUs
    module.nvmlDeviceGetClockInfo = lambda h, clock: 1980 if clock == 1 else 0
    module.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=42, memory=10)
    if instant:
        module.NVML_FI_DEV_POWER_INSTANT = 186
        module.nvmlDeviceGetFieldValues = lambda h, ids: [
            SimpleNamespace(fieldId=ids[0], nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=123456))]
    module.calls = calls
    return module


@pytest.mark.parametrize(("instant", "power", "source"),
                         [(True, 123456, "NVML_FI_DEV_POWER_INSTANT"), (False, 71000, "nvmlDeviceGetPowerUsage")])
def test_nvml_sampler_with_fake_library(monkeypatch, instant, power, source):
    fake = _fake_pynvml(instant=instant)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = NvmlSampler(interval_s=0.005)
    with sampler:
        _wait_for(sampler, 3)
    sample = sampler.samples[0]
    assert (sample.total_mw, sample.rails, sample.gpu_clock_mhz, sample.gpu_util_pct) == (power, {"gpu": power}, 1980, 42)
    assert sampler.describe()["power_source"] == source and sampler.describe()["gpu"] == "NVIDIA H100 80GB HBM3"
    assert fake.calls["shutdown"] == 1
    assert NvmlSampler.probe() == (True, "1 GPU(s)")


def test_nvml_missing_or_no_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(SamplerUnavailableError, match="nvidia-ml-py"):
        NvmlSampler().start()
    assert NvmlSampler.probe()[0] is False
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_error=True))
    with pytest.raises(PowerSamplerError, match="Driver Not Loaded"):
        NvmlSampler().start()
    assert NvmlSampler.probe() == (False, "NVML does not work here: Driver Not Loaded")
