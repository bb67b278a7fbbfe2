"""benchmarks/speed.py: the --quick run completes, writes every section, prints the table last; the CNN baseline matches."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "speed.py"


def _load_speed():
    spec = importlib.util.spec_from_file_location("_speed_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_writes_all_sections(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in ("command", "device", "device_type", "date", "versions", "settings", "copy_bandwidth", "scan", "tile", "frame",
                "train", "upscale", "cnn", "ratios", "goals", "errors", "skipped", "elapsed_s"):
        assert key in report, key
    assert report["device_type"] == "cpu"
    assert {"torch", "triton", "onnxruntime"} <= set(report["versions"])
    assert report["copy_bandwidth"]["gbs"] > 0
    assert report["skipped"] == 0

    rows = [row for section in ("scan", "tile", "frame", "train", "upscale") for row in report[section]]
    has_ort = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    for row in rows:
        if row.get("path") == "onnxruntime" and not has_ort:
            continue
        assert "error" not in row, row

    fwd = [r for r in report["scan"] if r["mode"] == "fwd"]
    assert {r["impl"] for r in fwd} == {"chunked", "reference"}
    assert all(r["ms"] > 0 and r["gbs"] > 0 and r["frac_of_copy_bw"] > 0 for r in fwd)
    assert any(r["mode"] == "fwd+bwd" and r["ms"] > 0 for r in report["scan"])
    for section in ("tile", "frame", "train"):
        assert {r["model"] for r in report[section]} == {"mamba", "cnn"}, section
        assert all(r["ms"] > 0 for r in report[section])
    assert all(r["fps"] > 0 for r in report["frame"])
    assert all(r["minutes_10k"] > 0 for r in report["train"])
    assert {r["section"] for r in report["ratios"]} == {"tile", "frame", "train"}
    assert abs(report["cnn"]["test"]["rel_diff"]) <= 0.10
    (stream,) = report["stream"]  # issue 16: the app-default Upscaler.stream row, uint8 in and out
    assert stream["scan"] == "auto"
    assert "error" not in stream, stream
    assert stream["frames"] == 6 and stream["fps"] > 0 and stream["out_shape"] == [80, 112, 3] and stream["dropped"] == 0
    assert 0 < stream["latency_ms_p50"] <= stream["latency_ms_p99"] and stream["precision_used"] == "fp32"
    assert report["goals"]["issue16_stream_fps_540p_default"]["met"] is None  # tiny CPU frames: not the goal's configuration
    paths = {r["path"]: r for r in report["upscale"]}
    assert {"torch-chunked", "torch-reference"} <= set(paths)
    assert paths["torch-chunked"]["ratio_to_chunked"] == pytest.approx(1.0)
    assert "train_10k_minutes" in report["goals"] and "cpu_upscale_s" in report["goals"]
    assert report["goals"]["train_10k_minutes"]["met"] is None  # a CPU quick run is not the goal's configuration

    tail = proc.stdout.strip().splitlines()
    assert tail[-1].startswith("wrote ")
    assert "GOALS" in "\n".join(tail[-20:])  # the table comes last


def test_cnn_baseline_matches_student_macs() -> None:
    speed = _load_speed()
    spec = speed.matched_cnn("student")
    assert spec["mamba_macs_per_lr_pixel"] == pytest.approx(155_000, rel=0.01)  # issue 7: ~155K multiply-adds per LR pixel
    assert abs(spec["rel_diff"]) <= 0.10
    assert spec["width"] == 32


def test_time_fn_respects_min_reps_and_budget() -> None:
    import torch

    speed = _load_speed()
    calls = []
    res = speed.time_fn(lambda i: calls.append(i), torch.device("cpu"), target_s=1e9, warmup=2, min_reps=3, max_reps=4)
    assert res["reps"] == 4 and calls == list(range(6))  # the index (warm-up included) rotates the input sets
    res = speed.time_fn(lambda i: time.sleep(0.01), torch.device("cpu"), target_s=0.001, warmup=0, min_reps=3)
    assert res["reps"] == 1 and res["ms"] >= 10  # one call over 4 x target_s: no more reps
