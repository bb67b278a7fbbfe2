"""Models by name (issue 15): the registry, names in the one resolver, --model/-n NAME on every command, `models`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambaesr_edge.cli import main
from mambaesr_edge.fileio import sha256_file
from mambaesr_edge.models import DEFAULT_MODEL, MODELS, PARAM_BUDGET, PLANNED, NamedModel, UnknownModelError, get_model, looks_like_name
from mambaesr_edge.resources import asset_path, default_weights_path, frontier_path, model_weights_path
from mambaesr_edge.runtime.source import SourceKind, classify

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHA256 = "56271f5886618119e2251276343996399beae420be138872afb8147d905d00da"  # MODEL_CARD.md


def _params_of(path: Path) -> int:
    """Parameter count of a shipped weights file, from its tensor shapes (torch-free)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        return sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())


def test_registry_is_consistent_with_the_shipped_files():
    assert DEFAULT_MODEL in MODELS and MODELS[DEFAULT_MODEL].shipped
    for name, model in MODELS.items():
        assert model.name == name and looks_like_name(name)
        if model.shipped:  # its file is in the package, its count is the file's, within the budget
            path = model_weights_path(name)
            assert path.parent == asset_path("x").parent and _params_of(path) == model.params <= PARAM_BUDGET
        else:  # planned: no weights file, and no stand-in (a copy of another model's file)
            assert model.weights_file is None and model.set5_target is not None
    shipped_files = [m.weights_file for m in MODELS.values() if m.shipped]
    assert len(shipped_files) == len(set(shipped_files))
    assert default_weights_path() == model_weights_path(DEFAULT_MODEL) and sha256_file(default_weights_path()) == DEFAULT_SHA256
    assert MODELS[DEFAULT_MODEL].params == 151_368
    assert [MODELS[n].set5_target for n in ("fast", "balanced", "quality")] == [31.25, 31.85, 32.15]


def test_registry_and_resolver_do_not_import_torch():
    code = ("import sys; from mambaesr_edge.runtime.source import classify; from mambaesr_edge.cli import models; "
            "classify('dvmsr-g1'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


@pytest.fixture()
def planned_model(monkeypatch) -> str:
    """A registered but untrained name (every issue-15 name ships now; a later model may be planned first)."""
    entry = NamedModel(name="huge", status=PLANNED, summary="not trained yet: a test entry", network="DVMSR x2",
                       params=848_856, weights_file=None, set5_target=32.5, provenance="test", recipe="tools/gpu_train_named.sh")
    monkeypatch.setitem(MODELS, "huge", entry)
    return "huge"


def test_classify_accepts_names_and_lists_them_for_an_unknown_one(tmp_path, monkeypatch, planned_model):
    source = classify("dvmsr-g1")
    assert source.kind == SourceKind.WEIGHTS and source.path == default_weights_path() and source.name == "dvmsr-g1"
    assert source.label == "model dvmsr-g1" and classify(Path("dvmsr-g1")).path == source.path
    with pytest.raises(UnknownModelError, match="unknown model 'fastest'") as unknown:
        classify("fastest")
    assert "dvmsr-g1, fast, balanced, quality" in unknown.value.hint and "not trained yet: huge" in unknown.value.hint
    with pytest.raises(UnknownModelError, match="'huge' is not trained yet"):
        classify("huge")
    for name in ("fast", "balanced", "quality"):
        assert classify(name).path == model_weights_path(name) != default_weights_path()
    monkeypatch.chdir(tmp_path)  # an existing path wins over a name
    (tmp_path / "dvmsr-g1").write_bytes(b"x")
    with pytest.raises(Exception, match="cannot tell the backend"):
        classify("dvmsr-g1")
    assert classify("model.onnx").kind == SourceKind.ONNX  # suffixes as before
    with pytest.raises(UnknownModelError):
        get_model("nope")


@pytest.fixture()
def small_image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("spelling", ["-n", "--model", "-m", "--model-name"])
def test_upscale_by_name(spelling, small_image, tmp_path, capsys):
    out = tmp_path / f"out{spelling}.png"
    assert main(["upscale", str(small_image), "-o", str(out), spelling, "dvmsr-g1"]) == 0, capsys.readouterr().err
    by_name = np.asarray(Image.open(out))
    assert main(["upscale", str(small_image), "-o", str(tmp_path / "w.png"), "--weights", str(default_weights_path())]) == 0
    assert by_name.shape == (80, 96, 3) and np.array_equal(by_name, np.asarray(Image.open(tmp_path / "w.png")))


def test_upscale_with_an_untrained_or_unknown_name_fails_cleanly(small_image, tmp_path, capsys, planned_model):
    out = tmp_path / "out.png"
    assert main(["upscale", str(small_image), "-o", str(out), "-n", planned_model]) == 2
    err = capsys.readouterr().err
    assert "'huge' is not trained yet" in err and "Traceback" not in err and not out.exists()
    assert main(["upscale", str(small_image), "-o", str(out), "--model", "bogus"]) == 2
    assert "unknown model 'bogus'" in capsys.readouterr().err


def test_eval_by_name(tmp_path, capsys):
    root = tmp_path / "Tiny"
    (root / "HR").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(root / "HR" / "a.png")
    reports = []
    for args in (["-n", "dvmsr-g1"], ["--weights", str(default_weights_path())]):
        out = tmp_path / f"{args[0]}.json"
        assert main(["eval", str(root), *args, "--json", str(out)]) == 0, capsys.readouterr().err
        reports.append(json.loads(out.read_text()))
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"] == DEFAULT_SHA256
    assert reports[0]["datasets"]["Tiny"]["psnr"] == reports[1]["datasets"]["Tiny"]["psnr"]
    assert reports[0]["params"] == 151_368


def test_export_by_name(tmp_path, monkeypatch, capsys, planned_model):
    """export -n NAME loads that model's weights (the bundle writing itself is tested in test_export.py)."""
    import mambaesr_edge.export.writer as writer

    seen = {}

    class Stop(Exception):
        pass

    def fake_export_bundle(model, sha256, out_dir, options):
        seen.update(sha256=sha256, groups=model.config.groups)
        raise Stop

    monkeypatch.setattr(writer, "export_bundle", fake_export_bundle)
    for spelling in ("-n", "--model", "-m"):
        with pytest.raises(Stop):
            main(["export", "--device", "x86-cpu", spelling, "dvmsr-g1", "--out", str(tmp_path / "b")])
        assert seen == {"sha256": DEFAULT_SHA256, "groups": 1}
    code = main(["export", "--device", "x86-cpu", "-n", "dvmsr-g1", "-w", str(default_weights_path()), "--out", str(tmp_path / "b")])
    assert code == 2 and "--model or --weights, not both" in capsys.readouterr().err
    assert main(["export", "--device", "x86-cpu", "-n", planned_model, "--out", str(tmp_path / "b")]) == 2
    assert "not trained yet" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_bench_by_name(tmp_path, capsys):
    """bench --model NAME (bench's -n stays --samples)."""
    args = ["bench", "-n", "2", "--model", "dvmsr-g1", "--tile", "8", "--batch", "1", "--warmup", "0", "--idle-seconds", "0",
            "--power", "none", "--out", str(tmp_path), "--name", "named"]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "named.json").read_text())
    assert report["meta"]["model"]["weights_sha256"] == DEFAULT_SHA256 and report["meta"]["model"]["params"] == 151_368


def test_models_command_prints_registry_and_frontier(tmp_path, capsys, planned_model):
    frontier = {"date": "2026-01-01", "device": "test cpu", "command": "benchmarks/models.py", "rows": [
        {"name": "dvmsr-g1", "kind": "shipped", "params": 151368, "datasets": {"Set5": {"psnr": 31.0735, "ssim": 0.8775}},
         "fp16_onnx_drop_db": 0.0012, "orin_nano_ms_per_tile": {"pure_op": 16.3, "plugin": 0.55}, "cpu_seconds_128": 0.77,
         "gpu_ms_per_tile_batch16": None},
        {"name": "DVMSR", "kind": "reference", "params": 424428, "datasets": {"Set5": {"psnr": 32.181, "ssim": 0.8946}}},
        {"name": "bicubic", "kind": "reference", "params": None, "datasets": {"Set5": {"psnr": 28.43, "ssim": 0.8111}}},
    ]}
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(frontier))
    assert main(["models", "--frontier", str(path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "31.07 / 0.8775" in lines["dvmsr-g1"] and "shipped" in lines["dvmsr-g1"] and "0.77" in lines["dvmsr-g1"]
    assert "not trained yet" in lines[planned_model] and "32.5" in lines[planned_model]
    for name, target in (("fast", "31.25"), ("balanced", "31.85"), ("quality", "32.15")):  # shipped, not in this frontier file
        assert "shipped" in lines[name] and target in lines[name] and "not trained yet" not in lines[name]
    assert "32.18 / 0.8946" in lines["DVMSR"] and "424,428" in lines["DVMSR"] and "28.43" in lines["bicubic"]
    assert main(["models", "--frontier", str(tmp_path / "missing.json")]) == 2


def test_shipped_frontier_has_a_row_per_shipped_model_and_the_references():
    report = json.loads(frontier_path().read_text())
    names = {row["name"] for row in report["rows"]}
    assert {n for n, m in MODELS.items() if m.shipped} | {"DVMSR", "bicubic"} <= names
    assert {"command", "date", "device"} <= set(report)
    for row in report["rows"]:
        if row["kind"] == "shipped":
            assert row["params"] == MODELS[row["name"]].params and row["weights_sha256"] == sha256_file(model_weights_path(row["name"]))


@pytest.mark.data
def test_each_shipped_model_keeps_its_committed_set5_psnr(benchmark_dir):
    """Issue 15's CI check: each shipped model's Set5 PSNR to 0.01 dB of the committed frontier (numpy path: fast)."""
    from mambaesr_edge.evaluate import evaluate_upscaler
    from mambaesr_edge.runtime import Upscaler

    rows = {row["name"]: row for row in json.loads(frontier_path().read_text())["rows"]}
    for name, model in MODELS.items():
        if model.shipped:
            up = Upscaler.from_path(name, tile=0)
            assert up.backend.info.name == "numpy"
            result = evaluate_upscaler(up, benchmark_dir / "Set5", scale=4)
            assert result.psnr == pytest.approx(rows[name]["datasets"]["Set5"]["psnr"], abs=0.01), name


def test_named_models_carry_their_provenance():
    """tools/ship_model.py writes where each named model's weights come from into the file (issue 15)."""
    from safetensors import safe_open

    from mambaesr_edge.weights_format import PROVENANCE_KEY

    for name in ("fast", "balanced", "quality"):
        with safe_open(str(model_weights_path(name)), framework="np") as handle:
            provenance = json.loads(handle.metadata()[PROVENANCE_KEY])
        assert provenance["name"] == name and provenance["params"] == MODELS[name].params and provenance["source"]
        if name == "quality":
            continue
        # the registry says what the file says: the schedule run out, the best step on the validation split
        assert provenance["schedule_completed"] is True and provenance["selected"].endswith("by val_split PSNR")
        assert f"{provenance['steps']:,}-step cosine" in MODELS[name].provenance and provenance["val_from_train"] == 20
        assert provenance["run"] in MODELS[name].provenance and provenance["network"] == MODELS[name].network


@pytest.mark.parametrize("name", ["fast", "balanced", "quality"])
def test_upscale_with_each_named_model(name, small_image, tmp_path, capsys):
    """Issue 15's done-when: `upscale IMG -o OUT --model NAME` for each name (numpy on the CPU, the file's own network)."""
    out = tmp_path / f"{name}.png"
    assert main(["upscale", str(small_image), "-o", str(out), "--model", name]) == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out)).shape == (80, 96, 3)
    assert classify(name).path.name == MODELS[name].weights_file


@pytest.mark.data
def test_frontier_script_takes_gpu_columns_from_a_gpu_only_run(tmp_path, shared_dir):
    """benchmarks/models.py --gpu-from: a machine without CUDA fills the GPU columns from a --gpu-only run's JSON,
    and the report says where they came from."""
    gpu = {"command": "benchmarks/models.py --gpu-only", "date": "2026-12-07T00:00:00+00:00", "device": "NVIDIA H200",
           "rows": {"dvmsr-g1": {"gpu_device": "NVIDIA H200", "gpu_ms_per_tile_batch16": 1.5, "gpu_ms_per_frame_960x540": 20.0}}}
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    out = tmp_path / "frontier.json"
    args = [sys.executable, "benchmarks/models.py", "--rows", "dvmsr-g1", "bicubic", "--datasets", "Set5", "--no-export",
            "--cpu-rounds", "1", "--gpu-from", str(tmp_path / "gpu.json"), "--json", str(out), "--png", str(tmp_path / "f.png")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MAMBAESR_SHARED": str(shared_dir)}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["dvmsr-g1"]["gpu_ms_per_tile_batch16"] == 1.5 and rows["dvmsr-g1"]["gpu_ms_per_frame_960x540"] == 20.0
    assert "gpu_ms_per_tile_batch16" not in rows["dvmsr-g1"]["null_reasons"]
    assert rows["bicubic"]["gpu_ms_per_tile_batch16"] is None  # not a network: no GPU columns, whatever the file says
    assert report["gpu_columns"]["device"] == "NVIDIA H200" and report["gpu_columns"]["file"].endswith("gpu.json")
    assert rows["dvmsr-g1"]["datasets"]["Set5"]["psnr"] == pytest.approx(31.0736, abs=0.01)
