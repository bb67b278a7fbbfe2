"""The benchmark: timing and windows with fake backends and a fake power sampler, the reports, and the CLI."""

from __future__ import annotations

import csv
import json
import time
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from mambaesr_edge.bench import BenchError, run_bench, tiles_per_frame
from mambaesr_edge.bench_report import (
    check_output_dir,
    summarize,
    summary_rows,
    write_reports,
)
from mambaesr_edge.cli import main
from mambaesr_edge.power import PollingSampler, Sample
from mambaesr_edge.runtime.backends import BackendInfo


class FakeBackend:
    """Satisfies the Backend protocol; `delays` (seconds) cycle over the calls; `meter` sees busy/idle."""

    scale = 2

    def __init__(self, delays=(0.0,), meter=None, input_hw=None, max_batch=None, interrupt_at=None):
        self.info = BackendInfo(name="fake", scale=self.scale, input_hw=input_hw, max_batch=max_batch)
        self.delays = delays
        self.meter = meter
        self.interrupt_at = interrupt_at
        self.calls = 0
        self.syncs = 0

    def run(self, batch):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if self.meter is not None:
            self.meter.busy = True
        time.sleep(self.delays[(self.calls - 1) % len(self.delays)])
        if self.meter is not None:
            self.meter.busy = False
        n, c, h, w = batch.shape
        return np.zeros((n, c, h * self.scale, w * self.scale), np.float32)

    def synchronize(self):
        self.syncs += 1


class MeterSampler(PollingSampler):
    """Reads 3000 mW (GPU at 900 MHz, 95 %) while the backend is busy, 1000 mW otherwise; can die after N reads."""

    name = "meter"

    def __init__(self, interval_s=0.002, die_after=None):
        super().__init__(interval_s)
        self.busy = False
        self.die_after = die_after
        self.reads = 0

    def _read(self):
        self.reads += 1
        if self.die_after is not None and self.reads > self.die_after:
            raise OSError("meter unplugged")
        if self.busy:
            return Sample(time.monotonic(), 3000.0, {"VDD_IN": 3000.0}, 900.0, 95.0)
        return Sample(time.monotonic(), 1000.0, {"VDD_IN": 1000.0}, 300.0, 0.0)


def test_fast_backend_no_power():
    backend = FakeBackend()
    result = run_bench(backend, samples=50, warmup=3, idle_seconds=0.0, tile=16, batch=2)
    assert backend.calls == 53 and backend.syncs == 53
    assert result.completed == 50 and not result.partial
    report = summarize(result)
    assert report["power"]["available"] is False
    assert report["power"]["reason"] == "no sampler on this machine"
    assert report["throughput"]["tiles_per_s"] == pytest.approx(100 / sum(result.latencies_s))
    assert report["throughput"]["frame"]["tiles_per_frame"] == tiles_per_frame((1080, 1920), (16, 16), 0) == 68 * 120


def test_latency_statistics_of_a_slow_backend():
    backend = FakeBackend(delays=(0.002,) * 9 + (0.03,))
    result = run_bench(backend, samples=40, warmup=0, idle_seconds=0.0, tile=8)
    lat = summarize(result)["latency_ms"]
    assert 2.0 <= lat["p50"] < 15.0
    assert lat["max"] >= 30.0 and lat["p99"] >= lat["p90"] >= lat["p50"] >= lat["min"] >= 2.0
    assert lat["mean"] == pytest.approx(np.mean(result.latencies_s) * 1000)
    assert all(b >= a for a, b in pairwise(result.starts))


def test_power_windows_energy_and_gpu_stats():
    meter = MeterSampler()
    backend = FakeBackend(delays=(0.01,), meter=meter)
    result = run_bench(backend, samples=30, warmup=2, idle_seconds=0.15, tile=8, sampler=meter)
    power = summarize(result)["power"]
    assert power["available"] and power["sampler"]["name"] == "meter"
    assert power["idle"]["mean_mw"] == pytest.approx(1000.0, rel=0.05)  # edges interpolate from the warm-up
    assert 2500.0 < power["inference"]["mean_mw"] <= 3000.0  # busy nearly all of the window
    assert power["inference"]["peak_mw"] == 3000.0
    assert power["dynamic_mw"] == pytest.approx(power["inference"]["mean_mw"] - power["idle"]["mean_mw"])
    window = result.inference_window[1] - result.inference_window[0]
    assert power["energy_per_inference_mj"] == pytest.approx(power["inference"]["mean_mw"] * window / 30)
    assert power["energy_per_inference_mj"] == pytest.approx(3000.0 * np.mean(result.latencies_s), rel=0.2)
    assert power["inference"]["coverage"] == pytest.approx(1.0) and not power["gaps_marked"]
    assert 300.0 <= power["gpu_clock_mhz"]["mean"] <= 900.0 and power["gpu_util_pct"]["max"] == 95.0


def test_sampler_dying_mid_run_marks_the_gap():
    meter = MeterSampler(interval_s=0.005, die_after=40)  # about 0.2 s of readings, then nothing
    backend = FakeBackend(delays=(0.01,), meter=meter)
    result = run_bench(backend, samples=60, warmup=0, idle_seconds=0.1, tile=8, sampler=meter)
    assert result.completed == 60 and "meter unplugged" in result.sampler_error
    report = summarize(result)
    assert report["power"]["gaps_marked"] and report["power"]["inference"]["coverage"] < 0.9
    assert report["power"]["inference"]["gaps_s"]
    assert any(metric == "power gaps" for metric, _ in summary_rows(report))


def test_ctrl_c_returns_a_partial_result(tmp_path):
    backend = FakeBackend(interrupt_at=2 + 6)  # 2 warm-up calls, then the 6th timed one
    result = run_bench(backend, samples=100, warmup=2, idle_seconds=0.0, tile=8)
    assert result.partial and result.completed == 5 and "5 of 100" in result.partial_reason
    paths = write_reports(result, tmp_path)
    report = json.loads(paths["json"].read_text())
    assert report["partial"] is True and report["settings"]["samples_completed"] == 5


def test_ctrl_c_before_any_timed_inference(tmp_path):
    result = run_bench(FakeBackend(interrupt_at=1), samples=10, warmup=0, idle_seconds=0.0, tile=8)
    assert result.partial and result.completed == 0
    report = json.loads(write_reports(result, tmp_path)["json"].read_text())
    assert report["latency_ms"] is None and report["throughput"]["tiles_per_s"] is None
    _assert_png(tmp_path / "bench.png")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 0}, "--samples"),
        ({"samples": -3}, "--samples"),
        ({"samples": 5, "warmup": -1}, "--warmup"),
        ({"samples": 5, "idle_seconds": -1.0}, "--idle-seconds"),
        ({"samples": 5, "idle_seconds": float("nan")}, "--idle-seconds"),
        ({"samples": 5, "batch": 0}, "--batch"),
        ({"samples": 5, "tile": 8, "overlap": 8}, "overlap"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(BenchError, match=message):
        run_bench(FakeBackend(), **kwargs)


def test_backend_limits_are_checked():
    with pytest.raises(BenchError, match="takes only 64x64"):
        run_bench(FakeBackend(input_hw=(64, 64)), samples=1, tile=32)
    with pytest.raises(BenchError, match="at most batch 1"):
        run_bench(FakeBackend(max_batch=1), samples=1, tile=8, batch=4)

    class Wrong(FakeBackend):
        def run(self, batch):
            return np.zeros((1, 3, 4, 4), np.float32)

    with pytest.raises(BenchError, match="Backend protocol"):
        run_bench(Wrong(), samples=1, warmup=1, tile=8)


def _assert_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 200


def test_reports_with_power(tmp_path):
    meter = MeterSampler()
    result = run_bench(FakeBackend(delays=(0.005,), meter=meter), samples=20, warmup=1, idle_seconds=0.05,
                       tile=8, sampler=meter)
    paths = write_reports(result, tmp_path / "out", name="run1", meta={"command": "test"})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "run1.json", "run1.png", "run1_latency.csv", "run1_power.csv"]
    report = json.loads(paths["json"].read_text())
    assert set(report) >= {"format", "partial", "settings", "latency_ms", "throughput", "power", "windows_s", "meta", "files"}
    assert set(report["latency_ms"]) >= {"mean", "p50", "p90", "p99", "max"}
    assert set(report["throughput"]) >= {"tiles_per_s", "lr_megapixels_per_s", "frames_per_s", "frame"}
    assert set(report["power"]) >= {"idle", "inference", "dynamic_mw", "energy_per_inference_mj", "gpu_clock_mhz",
                                    "gpu_util_pct"}
    assert report["meta"] == {"command": "test"}
    with open(paths["power_csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(rows[0]) == {"t_s", "window", "total_mw", "gpu_clock_mhz", "gpu_util_pct", "VDD_IN_mw"}
    assert {"idle", "inference"} <= {row["window"] for row in rows}
    with open(paths["latency_csv"], newline="") as handle:
        assert len(list(csv.reader(handle))) == 21
    _assert_png(paths["png"])


def test_reports_without_power(tmp_path):
    result = run_bench(FakeBackend(), samples=10, warmup=0, idle_seconds=0.0, tile=8)
    paths = write_reports(result, tmp_path)
    _assert_png(paths["png"])
    assert paths["power_csv"].read_text().splitlines() == ["t_s,window,total_mw,gpu_clock_mhz,gpu_util_pct"]
    assert ("power", "unavailable (no sampler on this machine)") in summary_rows(json.loads(paths["json"].read_text()))


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BenchError, match="cannot write to the output folder"):
        check_output_dir(blocker / "out")


# -- the CLI -----------------------------------------------------------------------------------------------------
def test_cli_bench_tiny_model(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--samples", "20", "--preset", "test", "--tile", "8", "--warmup", "1", "--idle-seconds", "0",
                 "--out", str(out), "--name", "tiny"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "power: unavailable (no sampler on this machine)" in captured.err  # a note: stderr
    report = json.loads((out / "tiny.json").read_text())
    # a random-init --preset network: the backend `upscale --preset` would run (torch), not ONNX Runtime
    assert report["settings"]["backend"] == "torch" and report["settings"]["samples_completed"] == 20
    assert report["meta"]["profile"] == "x86-cpu" and report["meta"]["command"].startswith("mambaesr-edge bench")
    assert report["meta"]["model"]["weights"] == "random init (test preset)"
    _assert_png(out / "tiny.png")
    assert (out / "tiny_power.csv").is_file() and (out / "tiny_latency.csv").is_file()


def test_cli_bench_torch_backend(tmp_path, capsys):
    code = main(["bench", "--backend", "torch", "--samples", "5", "--preset", "test", "--tile", "8", "--warmup", "0",
                 "--idle-seconds", "0", "--scan", "reference", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr()
    assert json.loads((tmp_path / "bench.json").read_text())["settings"]["backend"] == "torch"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "0"], "--samples must be at least 1"),
        (["--samples", "-5"], "--samples must be at least 1"),
        (["--frame", "big"], "--frame must be WxH"),
        (["--power", "tegrastats"], "tegrastats"),
        (["--device", "toaster"], "unknown device"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, args, message):
    code = main(["bench", "--preset", "test", "--tile", "8", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_unwritable_out(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["bench", "--samples", "1", "--preset", "test", "--tile", "8", "--out", str(tmp_path / "file" / "o")])
    assert code == 2 and "cannot write to the output folder" in capsys.readouterr().err
