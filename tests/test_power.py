"""Power samplers: the tegrastats parser on every real fixture line, the sampler interface, energy integration."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mambaesr_edge.power import (
    NullSampler,
    PollingSampler,
    PowerSamplerError,
    Sample,
    parse_tegrastats_line,
    window_power,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_TEGRASTATS = REPO_ROOT / "tests" / "fixtures_power" / "fake_tegrastats.py"


def _load_fake_tegrastats():
    spec = importlib.util.spec_from_file_location("fake_tegrastats", FAKE_TEGRASTATS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tegrastats_fixture() -> Path | None:
    """../shared/fixtures/tegrastats/samples.txt (or under $MAMBAESR_SHARED), None when absent."""
    env = os.environ.get("MAMBAESR_SHARED")
    path = (Path(env) if env else REPO_ROOT.parent / "shared") / "fixtures" / "tegrastats" / "samples.txt"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def records() -> list[tuple[str, str]]:
    path = tegrastats_fixture()
    if path is None:
        pytest.skip("../shared/fixtures/tegrastats/samples.txt not found (set MAMBAESR_SHARED)")
    return _load_fake_tegrastats().read_records(path)


# Hand-checked from the fixture file. (sample, n-th line of that sample) -> (total mW, total from, GPU %, GPU MHz)
EXPECTED = {
    ("[1]", 0): (12479, "VDD_IN", 63, 621),  # Orin Nano JP6 under load: VDD_IN alone, not + CPU_GPU_CV + SOC
    ("[2]", 0): (4824, "VDD_IN", 0, None),  # Orin Nano idle, non-root: "GR3D_FREQ 0%" has no clock
    ("[3]", 0): (8820, "VDD_IN", 7, None),  # Orin NX: current 8820, not the running average 8217
    ("[4]", 0): (10135, "sum", 0, 114),  # AGX Orin JP5: 4788 + 798 + 3842 + 707, both NC (0) skipped
    ("[5]", 0): (13907, "sum", 12, 1300),  # AGX Orin JP7 cur/avg/max: 5139 + 3268 + 5500; clocks [1300,1300]
    ("[6]", 0): (5079, "VDD_IN", 0, 510),  # Xavier NX, line wrapped over 3 lines in the source
    ("[7]", 0): (4531, "POM_5V_IN", 86, 921),  # Nano JP4, no unit: POM_5V_IN cur (avg 3285)
    ("[7]", 1): (4523, "POM_5V_IN", 99, 921),
    ("[8]", 0): (2003, "POM_5V_IN", 0, 76),  # Nano idle, wrapped over 4 lines
    ("[9]", 0): (7632, "sum", 0, None),  # AGX Xavier JP4: 463 + 618 + 2936 + 0 + 309 + 3306
    ("[10]", 0): (3140, "VDD_IN", 0, None),  # TX2: VDD_IN among six rails, not their sum
}


def _keyed(records: list[tuple[str, str]]) -> dict[tuple[str, int], str]:
    keyed: dict[tuple[str, int], str] = {}
    for block, line in records:
        n = sum(1 for key in keyed if key[0] == block)
        keyed[(block, n)] = line
    return keyed


@pytest.mark.data
def test_every_fixture_line_has_an_expected_total(records):
    assert set(_keyed(records)) == set(EXPECTED)


@pytest.mark.data
@pytest.mark.parametrize("key", sorted(EXPECTED, key=lambda k: (int(k[0][1:-1]), k[1])))
def test_fixture_line_totals(records, key):
    line = _keyed(records)[key]
    total, source, util, clock = EXPECTED[key]
    parsed = parse_tegrastats_line(line)
    assert parsed.total_mw == total
    assert parsed.total_source == source
    assert parsed.gpu_util_pct == util
    assert parsed.gpu_clock_mhz == clock


@pytest.mark.data
def test_fixture_rails(records):
    lines = _keyed(records)
    assert parse_tegrastats_line(lines[("[1]", 0)]).rails == {"VDD_IN": 12479, "VDD_CPU_GPU_CV": 4667, "VDD_SOC": 2817}
    assert parse_tegrastats_line(lines[("[4]", 0)]).rails == {
        "VDD_GPU_SOC": 4788, "VDD_CPU_CV": 798, "VIN_SYS_5V0": 3842, "NC": 0, "VDDQ_VDD2_1V8AO": 707, "NC#2": 0}
    assert parse_tegrastats_line(lines[("[5]", 0)]).rails == {"VDD_GPU_SOC": 5139, "VDD_CPU_CV": 3268, "VIN_SYS_5V0": 5500}
    assert parse_tegrastats_line(lines[("[7]", 0)]).rails == {"POM_5V_IN": 4531, "POM_5V_GPU": 1113, "POM_5V_CPU": 539}
    assert parse_tegrastats_line(lines[("[9]", 0)]).rails == {
        "GPU": 463, "CPU": 618, "SOC": 2936, "CV": 0, "VDDRQ": 309, "SYS5V": 3306}
    assert list(parse_tegrastats_line(lines[("[10]", 0)]).rails) == [
        "VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU", "VDD_SYS_DDR"]
    assert parse_tegrastats_line(lines[("[1]", 0)]).timestamp == "11-15-2024 08:38:09"
    for line in lines.values():  # memory figures (RAM 1504/3956MB, IRAM 0/252kB) are not rails
        assert not {"RAM", "SWAP", "IRAM", "lfb", "cached"} & set(parse_tegrastats_line(line).rails)


# Written for this test (not copied): one line per format, so the parser is covered without ../shared.
@pytest.mark.parametrize(
    ("line", "total", "source", "clock"),
    [
        ("RAM 900/3956MB (lfb 9x4MB) GR3D_FREQ 40%@998 POM_5V_IN 3000/2500 POM_5V_GPU 800/700", 3000, "POM_5V_IN", 998),
        ("01-02-2026 10:00:00 RAM 1/2MB GR3D_FREQ 5%@[300] VDD_IN 6000mW/5000mW VDD_SOC 900mW/900mW", 6000, "VDD_IN", 300),
        ("GR3D_FREQ 1%@[400,600] VDD_GPU_SOC 1000mW/1mW/9mW VDD_CPU_CV 500mW/1mW/9mW NC 7mW/7mW/7mW", 1500, "sum", 600),
        ("GPU 10/10 CPU 20/20 SOC 30/30", 60, "sum", None),
    ],
)
def test_each_format(line, total, source, clock):
    parsed = parse_tegrastats_line(line)
    assert (parsed.total_mw, parsed.total_source, parsed.gpu_clock_mhz) == (total, source, clock)


@pytest.mark.parametrize("line", ["", "\n", "RAM 1504/3956MB (lfb 331x4MB) SWAP 0/1982MB", "garbage 12/x"])
def test_lines_without_rails(line):
    parsed = parse_tegrastats_line(line)
    assert parsed.total_mw is None and parsed.rails == {} and parsed.total_source == ""


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_raises(text):
    parsed = parse_tegrastats_line(text)
    assert parsed.total_mw is None or parsed.total_mw >= 0


# -- the sampler interface ---------------------------------------------------------------------------------------
class CountingSampler(PollingSampler):
    name = "counting"

    def __init__(self, interval_s=0.005, fail_after=None):
        super().__init__(interval_s)
        self.reads = 0
        self.fail_after = fail_after

    def _read(self):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise RuntimeError("sensor unplugged")
        return Sample(time.monotonic(), 1000.0 + self.reads, {"rail": 1.0})


def test_none_sampler():
    sampler = NullSampler()
    assert not sampler.available
    with sampler:
        time.sleep(0.01)
    assert sampler.samples == [] and sampler.error is None
    assert sampler.describe() == {"name": "none", "reason": "no sampler on this machine"}


def test_polling_sampler_runs_are_independent():
    sampler = CountingSampler()
    with sampler:
        time.sleep(0.06)
    first = sampler.samples
    assert len(first) >= 3 and all(a.t < b.t for a, b in pairwise(first))
    assert not sampler.running
    boundary = time.monotonic()
    second_run = sampler.__enter__()
    time.sleep(0.03)
    second = sampler.stop()
    assert second_run is sampler and second and all(s.t > boundary for s in second)
    assert sampler.samples == second and sampler.stop() == second  # stop when stopped: the last run


def test_double_start_and_bad_interval():
    sampler = CountingSampler()
    sampler.start()
    try:
        with pytest.raises(PowerSamplerError):
            sampler.start()
    finally:
        sampler.stop()
    with pytest.raises(PowerSamplerError):
        CountingSampler(interval_s=0)


def test_sampler_failure_is_recorded_and_samples_kept():
    sampler = CountingSampler(fail_after=3)
    with sampler:
        time.sleep(0.05)
    assert len(sampler.samples) == 3
    assert "sensor unplugged" in sampler.error


def test_samples_readable_from_other_threads_while_running():
    sampler = CountingSampler(interval_s=0.001)
    counts = []
    with sampler:
        readers = [threading.Thread(target=lambda: counts.append(len(sampler.samples))) for _ in range(8)]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
    assert len(counts) == 8


# -- energy over a window ----------------------------------------------------------------------------------------
def _samples(times, power):
    return [Sample(t, power(t)) for t in times]


def test_energy_constant_power():
    samples = _samples([i * 0.1 for i in range(21)], lambda t: 1000.0)  # 1 W from 0 to 2 s
    wp = window_power(samples, 0.5, 1.5, max_gap_s=0.5)
    assert wp.mean_mw == pytest.approx(1000.0)
    assert wp.energy_mj == pytest.approx(1000.0)  # 1 W for 1 s = 1 J
    assert wp.coverage == pytest.approx(1.0) and wp.gaps == ()


def test_energy_linear_ramp_with_window_edges_between_samples():
    samples = _samples([i * 0.1 for i in range(21)], lambda t: 1000.0 * t)  # p = 1000 t mW
    wp = window_power(samples, 0.25, 1.75, max_gap_s=0.5)
    assert wp.energy_mj == pytest.approx(500.0 * (1.75**2 - 0.25**2))  # integral of 1000 t = 1500 mJ
    assert wp.mean_mw == pytest.approx(1000.0)
    assert wp.peak_mw == pytest.approx(1700.0)  # largest sample inside the window (t = 1.7)
    assert wp.samples == 15


def test_energy_gap_is_not_bridged():
    times = [i * 0.1 for i in range(11)] + [2.0 + i * 0.1 for i in range(11)]  # nothing between 1 s and 2 s
    samples = _samples(times, lambda t: 2000.0)
    wp = window_power(samples, 0.0, 3.5, max_gap_s=0.5)
    assert wp.gaps == ((pytest.approx(1.0), pytest.approx(2.0)), (pytest.approx(3.0), pytest.approx(3.5)))
    assert wp.covered_s == pytest.approx(2.0)
    assert wp.coverage == pytest.approx(2.0 / 3.5)
    assert wp.energy_mj == pytest.approx(2000.0 * 3.5)  # mean over the covered part, times the window


def test_energy_without_samples():
    wp = window_power([], 0.0, 1.0, max_gap_s=0.5)
    assert wp.mean_mw is None and wp.energy_mj is None and wp.gaps == ((0.0, 1.0),)
    between = window_power(_samples([0.0, 1.0], lambda t: 1000.0 + 1000.0 * t), 0.4, 0.6, max_gap_s=2.0)
    assert between.samples == 0 and between.mean_mw == pytest.approx(1500.0) and between.peak_mw == pytest.approx(1600.0)
