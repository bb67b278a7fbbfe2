"""`mambaesr-edge doctor` on this machine (no TensorRT, no GPU, no Jetson) and against stand-ins for a Jetson:
files under $MAMBAESR_DOCTOR_ROOT (etc/nv_tegra_release, the device-tree model, proc/meminfo), tools first on PATH
(nvpmodel, jetson_clocks, dpkg-query, tegrastats) and a fake `tensorrt` module (as tests/test_artifact_contract.py)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest
from test_power_samplers import install_fake_tegrastats

from mambaesr_edge import gpu
from mambaesr_edge.cli import main
from mambaesr_edge.doctor import DOCTOR_ROOT_ENV, FAIL, PASS, SKIP, Check, DoctorOptions, Facts, System, run_doctor
from mambaesr_edge.doctor import jetson as jp
from mambaesr_edge.doctor.checks import ProfileChoice, check_profile, check_tensorrt
from mambaesr_edge.doctor.pipeline import DEBUG_FIX, bench_step, engine_step, onnx_parity_step, plugin_step
from mambaesr_edge.profiles import load_profile

ENVIRONMENT = ["python", "torch", "onnxruntime", "tensorrt", "cuda", "gpu", "jetson", "power-mode", "jetson-clocks", "memory",
               "disk", "power-samplers", "profile"]  # fmt: skip
PIPELINE = ["export", "plugin", "engine", "parity-onnx", "parity-engine", "bench"]

JETSON_CLOCKS_OFF = """SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Developer Kit
Online CPUs: 0-5
cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=1 cpuidle=1
GPU MinFreq=306000000 MaxFreq=624750000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=2133000000 CurrentFreq=2133000000 FreqOverride=0
NV Power Mode: 15W"""


def _tool(bin_dir: Path, name: str, body: str) -> None:
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)


def _fake_tensorrt(monkeypatch, version: str) -> None:
    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    fake.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)


def make_jetson(tmp_path: Path, monkeypatch, *, l4t="# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
                jetpack="6.2+b77", tensorrt="10.3.0.30", board="NVIDIA Jetson Orin Nano Developer Kit", gpu_answers=True) -> System:
    """A re-rooted Orin Nano (JetPack 6.2 by default) with its tools first on PATH; returns the System that reads it."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text(l4t + ", DATE: Wed Jan  8 01:49:37 UTC 2025\n")
    model = root / "sys" / "firmware" / "devicetree" / "base" / "model"
    model.parent.mkdir(parents=True)
    model.write_bytes(board.encode() + b"\x00")
    (root / "proc").mkdir()
    (root / "proc" / "meminfo").write_text("MemTotal:        7802212 kB\nMemFree:  1000 kB\nMemAvailable:    5120000 kB\n")
    bin_dir.mkdir()
    _tool(bin_dir, "nvpmodel", 'echo "NVPM WARN: fan mode is not set!"; echo "NV Power Mode: 15W"; echo 0')
    _tool(bin_dir, "jetson_clocks", f"cat <<'EOF'\n{JETSON_CLOCKS_OFF}\nEOF")
    trt_deb = f"{tensorrt}-1+cuda12.5"
    _tool(bin_dir, "dpkg-query", f'case "$3" in nvidia-jetpack) printf "{jetpack}";; tensorrt) printf "{trt_deb}";; *) exit 1;; esac')
    install_fake_tegrastats(bin_dir, tmp_path, monkeypatch)  # also puts bin_dir first on PATH
    monkeypatch.setenv(DOCTOR_ROOT_ENV, str(root))
    _fake_tensorrt(monkeypatch, tensorrt)
    if gpu_answers:
        monkeypatch.setattr(gpu, "gpu_identity", lambda device_index=0: ("Orin", "8.7"))
    return System.from_environ()


def _facts(**fields) -> Facts:
    return Facts(python="3.11.7", platform="Linux", arch="aarch64", **fields)


# ---------------------------------------------------------------------------------------------------- parsers
def test_jetson_parsers_and_tables():
    assert jp.parse_l4t_release("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic") == "36.4.3"
    assert jp.parse_l4t_release("# R35 (release), REVISION: 5.0, GCID: 1") == "35.5.0"
    assert jp.parse_l4t_release("Ubuntu 22.04") is None
    assert [jp.jetpack_for_l4t(v) for v in ("36.4.3", "36.4.0", "36.3.0", "35.2.1", "99.1")] == ["6.2", "6.1", "6.0", "5.1", None]
    assert [jp.tensorrt_for_jetpack(v) for v in ("6.2", "6.2.1", "6.0", "5.1.3", "7.2")] == ["10.3", "10.3", "8.6.2", "8.5.2", "10.16"]
    assert jp.jetpacks_with_tensorrt("10.3") == ["6.1", "6.2"]
    assert jp.parse_nvpmodel("NVPM WARN: x\nNV Power Mode: MAXN_SUPER\n2\n") == jp.PowerMode("MAXN_SUPER", 2)
    assert jp.parse_nvpmodel("nvpmodel: command failed") is None
    off = jp.parse_jetson_clocks(JETSON_CLOCKS_OFF)
    assert not off.locked and (off.gpu_min_mhz, off.gpu_max_mhz) == (306.0, 624.75)
    assert jp.parse_jetson_clocks("GPU MinFreq=624750000 MaxFreq=624750000 CurrentFreq=624750000").locked
    assert jp.parse_jetson_clocks("jetson_clocks: must be run as root") is None
    assert jp.parse_dpkg_version("6.2+b77") == "6.2" and jp.parse_dpkg_version("10.3.0.30-1+cuda12.5") == "10.3.0.30"
    assert jp.profile_for_board("NVIDIA Jetson AGX Orin Developer Kit") == "agx-orin"
    assert jp.profile_for_board("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super") == "orin-nano"
    assert jp.profile_for_board("NVIDIA Jetson AGX Thor Developer Kit") is None


def test_check_type_refuses_unknown_status_and_a_failure_without_fix():
    with pytest.raises(ValueError, match="status"):
        Check("x", "warn", "detail")
    with pytest.raises(ValueError, match="without a fix"):
        Check("x", FAIL, "detail")
    assert Check("x", FAIL, "d", "f", required=False).blocks is False and Check("x", FAIL, "d", "f").blocks


# ---------------------------------------------------------------------------------------------------- this machine
def test_this_machine_skips_jetson_tensorrt_and_gpu_with_reasons(tmp_path, monkeypatch):
    monkeypatch.setenv(DOCTOR_ROOT_ENV, str(tmp_path / "empty-root"))
    monkeypatch.setattr(gpu, "gpu_identity", lambda device_index=0: ("", ""))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails: absent
    report = run_doctor(DoctorOptions(out_dir=tmp_path / "out", pipeline=False))
    assert [c.name for c in report.checks] == ENVIRONMENT
    assert report.choice.profile.name == "x86-cpu" and report.choice.source == "detected"
    skipped = {c.name: c.detail for c in report.checks if c.status == SKIP}
    assert {"tensorrt", "gpu", "jetson", "power-mode", "jetson-clocks", "memory"} <= set(skipped)
    assert "not a Jetson" in skipped["jetson"] and "profile x86-cpu runs onnxruntime-cpu" in skipped["tensorrt"]
    assert "unknown" in skipped["memory"]  # the re-rooted folder has no proc/meminfo
    assert report.exit_code == 0 and not report.facts.is_jetson


def test_asking_for_a_jetson_profile_here_fails_with_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv(DOCTOR_ROOT_ENV, str(tmp_path / "empty-root"))
    monkeypatch.setattr(gpu, "gpu_identity", lambda device_index=0: ("", ""))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    report = run_doctor(DoctorOptions(device="orin-nano", out_dir=tmp_path / "out", pipeline=False))
    assert report.exit_code == 1
    assert report.check("tensorrt").status == FAIL and "run this on the orin-nano" in report.check("tensorrt").fix
    assert report.check("gpu").status == FAIL and "--device x86-cpu" in report.check("gpu").fix
    assert report.check("profile").status == PASS  # nothing to compare: no GPU, no TensorRT here


# ---------------------------------------------------------------------------------------------------- stand-ins
def test_orin_nano_jetpack_62_stand_ins(tmp_path, monkeypatch):
    system = make_jetson(tmp_path, monkeypatch)
    report = run_doctor(DoctorOptions(out_dir=tmp_path / "out", pipeline=False), system)
    by = {c.name: c for c in report.checks}
    assert report.choice.profile.name == "orin-nano" and report.choice.source == "detected"
    assert "Orin Nano" in by["jetson"].detail and "L4T R36.4.3, JetPack 6.2 (dpkg nvidia-jetpack)" in by["jetson"].detail
    assert by["jetson"].data["jetpack_tensorrt"] == "10.3"
    assert by["power-mode"].status == PASS and by["power-mode"].detail.startswith("15W (nvpmodel mode 0)")
    assert by["jetson-clocks"].status == PASS and by["jetson-clocks"].data["locked"] is False
    assert by["tensorrt"].status == PASS and by["tensorrt"].data["version"] == "10.3.0.30"
    assert by["gpu"].detail == "Orin, compute capability 8.7"
    assert by["profile"].status == PASS and "matches (sm 8.7, TensorRT 10.3.0.30)" in by["profile"].detail
    assert by["power-samplers"].status == PASS and by["power-samplers"].data["used"] == "tegrastats"
    assert by["memory"].status == PASS and by["memory"].data["available_mib"] == 5000
    assert report.exit_code == 0


def test_jetpack_60_with_the_orin_nano_profile_is_a_tensorrt_mismatch(tmp_path, monkeypatch):
    system = make_jetson(tmp_path, monkeypatch, l4t="# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64",
                         jetpack="6.0+b106", tensorrt="8.6.2.3")  # fmt: skip
    report = run_doctor(DoctorOptions(out_dir=tmp_path / "out", pipeline=False), system)
    profile = report.check("profile")
    assert profile.status == FAIL and "TensorRT 8.6.2.3, profile expects 10.3" in profile.detail
    assert "this JetPack 6.0 ships TensorRT 8.6.2.3" in profile.fix and "upgrade to JetPack 6.1+" in profile.fix
    assert report.exit_code == 1


def test_the_wrong_profile_for_the_board_and_an_unknown_board(tmp_path, monkeypatch):
    system = make_jetson(tmp_path, monkeypatch)
    wrong = run_doctor(DoctorOptions(device="xavier-nx", out_dir=tmp_path / "out", pipeline=False), system)
    check = wrong.check("profile")
    assert check.status == FAIL and "this board matches profile orin-nano, not xavier-nx" in check.detail and "--device orin-nano" in check.fix
    assert "compute capability 8.7, profile expects 7.2" in check.detail
    thor = make_jetson(tmp_path / "thor", monkeypatch, board="NVIDIA Jetson AGX Thor Developer Kit")
    unknown = run_doctor(DoctorOptions(out_dir=tmp_path / "out2", pipeline=False), thor)
    assert unknown.check("profile").status == FAIL and "no shipped profile" in unknown.check("profile").detail


def test_broken_jetson_tools_are_reported_not_raised(tmp_path, monkeypatch):
    system = make_jetson(tmp_path, monkeypatch)
    bin_dir = tmp_path / "bin"
    _tool(bin_dir, "nvpmodel", 'echo "NVPM ERROR: failed to read config" >&2; exit 1')
    _tool(bin_dir, "jetson_clocks", 'echo "jetson_clocks: must be run as root" >&2; exit 1')
    report = run_doctor(DoctorOptions(out_dir=tmp_path / "out", pipeline=False), system)
    mode, clocks = report.check("power-mode"), report.check("jetson-clocks")
    assert mode.status == FAIL and not mode.required and "NVPM ERROR" in mode.detail
    assert clocks.status == SKIP and "needs root" in clocks.detail
    assert report.exit_code == 0  # optional failures do not fail the run


def test_tensorrt_in_the_system_but_not_importable_says_to_use_the_system_site_packages(tmp_path, monkeypatch):
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise OSError('libnvinfer.so.10: cannot open shared object file')\n")
    system = make_jetson(tmp_path, monkeypatch)
    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    report = run_doctor(DoctorOptions(out_dir=tmp_path / "out", pipeline=False), system)
    trt = report.check("tensorrt")
    assert trt.status == FAIL and "libnvinfer.so.10" in trt.detail and "TensorRT 10.3.0.30 is installed (dpkg)" in trt.detail
    assert "--system-site-packages" in trt.fix
    assert report.check("profile").status == PASS  # dpkg's version is compared: 10.3 matches
    facts = _facts(tensorrt_error="ModuleNotFoundError", board="NVIDIA Jetson Orin Nano", l4t="36.4.3")
    assert "sudo apt install nvidia-jetpack" in check_tensorrt(facts, load_profile("orin-nano")).fix


def test_profile_match_compares_major_minor_only():
    choice = ProfileChoice(load_profile("desktop-gpu"), "--device", "desktop-gpu", "GPU")
    assert check_profile(choice, _facts(tensorrt="10.9.0.34", gpu_name="RTX", compute_capability="8.6")).status == PASS
    choice = ProfileChoice(load_profile("xavier-nx"), "--device", "xavier-nx", "GPU")
    assert check_profile(choice, _facts(tensorrt="8.5.2.2", gpu_name="Xavier", compute_capability="7.2")).status == PASS
    assert check_profile(choice, _facts(tensorrt="8.6.2", gpu_name="Xavier", compute_capability="7.2")).status == FAIL


# ---------------------------------------------------------------------------------------------------- pipeline steps
@pytest.fixture(scope="module")
def orin_bundle(tmp_path_factory):
    """The shipped model exported for orin-nano at tile 16 (fp32 + fp16 graphs, build_engine.sh; ~3 s)."""
    from mambaesr_edge.bundle import read_bundle
    from mambaesr_edge.export.writer import export_model

    folder = tmp_path_factory.mktemp("doctor") / "bundle"
    export_model("orin-nano", out=folder, tile=16, build_engine=False)
    return read_bundle(folder)


def _fake_nvcc(tmp_path: Path, exit_code: int = 0, release: str = "V12.6.68") -> str:
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n"
                    f'if [ "$1" = "--version" ]; then echo "Cuda compilation tools, release 12.6, {release}"; exit 0; fi\n'
                    + ("echo 'error: boom' >&2; exit 1\n" if exit_code else
                       'while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then echo lib > "$2"; fi; shift; done\n'))  # fmt: skip
    nvcc.chmod(0o755)
    return str(nvcc)


def test_plugin_step_skips_with_reasons_builds_caches_and_reports_a_failed_build(tmp_path, monkeypatch):
    from mambaesr_edge.doctor.pipeline import _guarded

    profile = load_profile("orin-nano")
    root = tmp_path / "root"
    system = System(root=root)
    check, _ = plugin_step(_facts(), profile, system)
    assert check.status == SKIP and "nvcc" in check.detail
    nvcc = _fake_nvcc(tmp_path)
    check, _ = plugin_step(_facts(nvcc=nvcc), profile, system)
    assert check.status == SKIP and "NvInfer.h" in check.detail
    headers = root / "usr" / "include" / "aarch64-linux-gnu"
    headers.mkdir(parents=True)
    (headers / "NvInfer.h").write_text("// stand-in\n")
    check, _ = plugin_step(_facts(nvcc=nvcc, tensorrt="8.6.2"), profile, system)
    assert check.status == SKIP and "TensorRT 10+" in check.detail
    monkeypatch.setenv("MAMBAESR_CACHE_DIR", str(tmp_path / "cache"))
    check, library = plugin_step(_facts(nvcc=nvcc, tensorrt="10.3.0.30"), profile, system)
    assert check.status == PASS and library.name == "libmambaesr_scan_plugin_sm_87.so" and library.is_file() and not check.data["cached"]
    check, _ = plugin_step(_facts(nvcc=nvcc, tensorrt="10.3.0.30"), profile, system)
    assert check.status == PASS and check.data["cached"]
    broken = _fake_nvcc(tmp_path / "broken", exit_code=1, release="V12.6.77")  # another nvcc: not the cached build
    check, _ = _guarded("plugin", plugin_step, _facts(nvcc=broken, tensorrt="10.3.0.30"), profile, system)
    assert check.status == FAIL and "nvcc failed" in check.detail and "boom" in check.detail and check.fix


def test_engine_step_skips_without_tensorrt_or_gpu_and_reports_a_broken_tensorrt(tmp_path, monkeypatch, orin_bundle):
    from mambaesr_edge.doctor.pipeline import _guarded

    orin = load_profile("orin-nano")
    assert engine_step(_facts(), load_profile("x86-cpu"), orin_bundle, tmp_path)[0].detail.endswith("no TensorRT engine")
    assert "not importable" in engine_step(_facts(), orin, orin_bundle, tmp_path)[0].detail
    assert "no CUDA GPU" in engine_step(_facts(tensorrt="10.3.0.30"), orin, orin_bundle, tmp_path)[0].detail
    _fake_tensorrt(monkeypatch, "10.3.0.30")  # a module without the builder API: a broken install
    check, ok = _guarded("engine", engine_step, _facts(tensorrt="10.3.0.30", gpu_name="Orin", compute_capability="8.7"), orin,
                         orin_bundle, tmp_path)  # fmt: skip
    assert check.status == FAIL and check.detail.startswith("unexpected AttributeError") and check.fix == DEBUG_FIX and ok is None


def test_onnx_parity_and_bench_with_tegrastats_power(tmp_path, monkeypatch, orin_bundle):
    facts = _facts(onnxruntime="1", power_mode="15W", clocks_locked=False)
    check, ort_out = onnx_parity_step(facts, orin_bundle)
    assert check.status == PASS and "numpy model" in check.detail and check.data["psnr_db"] > 60 and ort_out.shape == (1, 3, 64, 64)
    make_jetson(tmp_path, monkeypatch)  # tegrastats stand-in on PATH
    check, _ = bench_step(facts, load_profile("orin-nano"), orin_bundle, False, True)
    data = check.data
    assert check.status == PASS and data["tiles"] == 20 and data["backend"] == "onnxruntime" and data["power_mode"] == "15W"
    assert data["p50_ms_per_tile"] > 0 and data["frames_per_s"] > 0
    assert data["power"]["available"] and data["mean_mw"] > 0 and data["energy_per_tile_mj"] > 0 and "power mode 15W" in check.detail


# ---------------------------------------------------------------------------------------------------- the command
def test_doctor_quick_on_this_machine_exits_0_and_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DOCTOR_ROOT_ENV, str(tmp_path / "empty-root"))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "out"
    assert main(["doctor", "--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "ready: 0 failed" in stdout and "wrote" in stdout
    report = json.loads((out / "doctor.json").read_text())
    assert set(report) == {"format", "created", "seconds", "ok", "exit_code", "counts", "options", "profile", "checks", "facts",
                           "root", "machine", "versions"}  # fmt: skip
    assert report["format"] == "mambaesr-edge-doctor/1" and report["ok"] is True and report["exit_code"] == 0
    assert [c["name"] for c in report["checks"]] == ENVIRONMENT + PIPELINE
    for check in report["checks"]:
        assert set(check) == {"name", "group", "status", "required", "detail", "fix", "data"} and check["detail"]
        assert check["status"] in ("pass", "skip")
    by = {c["name"]: c for c in report["checks"]}
    assert by["export"]["data"]["tile"] == 16 and by["bench"]["data"]["tiles"] == 20 and by["engine"]["status"] == "skip"
    assert report["profile"] == {"name": "x86-cpu", "source": "detected", "detected": "x86-cpu", "reason": "no Jetson, no CUDA GPU"}
    assert report["counts"]["fail"] == 0 and report["root"] == str(tmp_path / "empty-root")
    text = (out / "doctor.txt").read_text()
    assert text.startswith("mambaesr-edge doctor: READY for x86-cpu") and "SKIP  jetson: not a Jetson" in text
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_doctor_with_jetson_stand_ins_flags_the_mismatch_and_exits_1(tmp_path, monkeypatch, capsys):
    make_jetson(tmp_path, monkeypatch, l4t="# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64",
                jetpack="6.0+b106", tensorrt="8.6.2.3", gpu_answers=False)  # fmt: skip
    monkeypatch.setattr(gpu, "gpu_identity", lambda device_index=0: ("", ""))
    out = tmp_path / "out"
    assert main(["doctor", "--quick", "--out", str(out)]) == 1
    stdout = capsys.readouterr().out
    assert "not ready" in stdout and "upgrade to JetPack 6.1+" in stdout
    report = json.loads((out / "doctor.json").read_text())
    by = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is False and report["exit_code"] == 1 and by["profile"]["status"] == "fail"
    assert report["facts"]["l4t"] == "36.3.0" and report["facts"]["power_mode"] == "15W" and report["facts"]["tensorrt"] == "8.6.2.3"
    assert by["engine"]["status"] == "skip" and "no CUDA GPU" in by["engine"]["detail"]
    assert by["bench"]["data"]["power"]["available"] is True and by["bench"]["data"]["power_mode"] == "15W"


def test_doctor_checks_a_given_bundle(tmp_path, monkeypatch, orin_bundle):
    monkeypatch.setenv(DOCTOR_ROOT_ENV, str(tmp_path / "empty-root"))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    report = run_doctor(DoctorOptions(device="x86-cpu", bundle=orin_bundle.root, out_dir=tmp_path / "out", quick=True))
    assert report.check("export").detail.startswith(f"--bundle {orin_bundle.root}: profile orin-nano, tile 16, fp32 + fp16 graphs")
    assert report.check("parity-onnx").status == PASS and report.exit_code == 0
    mine = run_doctor(DoctorOptions(bundle=orin_bundle.root, out_dir=tmp_path / "out", pipeline=False))
    assert mine.choice.source == "bundle" and mine.choice.profile.name == "orin-nano"


@pytest.mark.parametrize("args, message", [
    (["--device", "jetson-tx9"], "unknown device"),
    (["--bundle", "no-such-bundle"], "bundle"),
    (["--out", "a-file"], "is a file"),
])  # fmt: skip
def test_bad_arguments_exit_2_before_any_check(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    assert main(["doctor", "--quick", *args]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "hint:" in err
    assert not (tmp_path / "doctor_out").exists()
