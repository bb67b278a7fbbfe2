"""Reading an export bundle (docs/interfaces.md) and checking a TensorRT engine's manifest. JSON only, never eval.

``read_bundle(dir) -> Bundle`` validates bundle.json; ``Bundle.onnx_path(precision)`` checks the file's sha256.
``engine_manifest_problems(manifest, env, ...)`` is the pure comparison the TensorRT backend uses to refuse an engine
built for another GPU / compute capability / TensorRT version or for other weights or another ONNX.

Engine manifest keys read (model.engine.json): ``tensorrt`` (alias ``tensorrt_version``), ``gpu_name`` (alias
``gpu``), ``compute_capability``, ``weights_sha256``, ``onnx_sha256``, and optionally ``precision``, ``shapes``,
``profile``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..fileio import sha256_file
from ..presets import ModelConfig
from .errors import BundleError

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "EngineEnvironment",
    "OnnxFile",
    "engine_manifest_problems",
    "is_bundle",
    "read_bundle",
    "read_engine_manifest",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "mambaesr-edge-bundle/1"
ENGINE_FILE = "model.engine"
ENGINE_MANIFEST = "model.engine.json"


@dataclass(frozen=True)
class OnnxFile:
    file: str
    sha256: str
    opset: int


@dataclass(frozen=True)
class Bundle:
    root: Path
    config: ModelConfig
    scale: int
    profile: str
    precision: str
    tile: int
    overlap: int
    batch: int
    dynamic_hw: bool
    input_name: str
    output_name: str
    onnx: OnnxFile
    onnx_fp16: OnnxFile | None
    weights_sha256: str
    max_tokens: int | None = None  # dynamic H/W graphs: the largest h*w they take

    @property
    def engine_path(self) -> Path:
        return self.root / ENGINE_FILE

    @property
    def engine_manifest_path(self) -> Path:
        return self.root / ENGINE_MANIFEST

    def onnx_path(self, precision: str = "fp32", *, verify: bool = True) -> Path:
        """The ONNX file for ``precision`` (fp16 falls back to fp32 when the bundle has none), sha256-checked."""
        entry = self.onnx_fp16 if precision == "fp16" and self.onnx_fp16 is not None else self.onnx
        if precision == "fp16" and self.onnx_fp16 is None:
            log.info("bundle %s has no fp16 ONNX; using the fp32 graph", self.root)
        path = self.root / entry.file
        if not path.is_file():
            raise BundleError(f"bundle {self.root} lacks {entry.file}", hint="re-run mambaesr-edge export")
        if verify and sha256_file(path) != entry.sha256:
            raise BundleError(
                f"{path} does not match the sha256 in bundle.json (stale or corrupt file)",
                hint="re-run mambaesr-edge export --force for this bundle",
            )
        return path


def is_bundle(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "bundle.json").is_file()


def _get(raw: dict, key: str, kind: type | tuple[type, ...], where: Path):
    if key not in raw:
        raise BundleError(f"{where}: missing field {key!r}", hint="re-run mambaesr-edge export")
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})", hint="re-run export")
    return value


def _onnx_entry(raw: object, where: Path) -> OnnxFile:
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: onnx entry must be an object", hint="re-run mambaesr-edge export")
    name = _get(raw, "file", str, where)
    if Path(name).name != name or name in ("", ".", ".."):
        raise BundleError(f"{where}: onnx file {name!r} must be a plain file name inside the bundle", hint="re-export")
    return OnnxFile(name, _get(raw, "sha256", str, where), _get(raw, "opset", int, where))


def read_bundle(path: str | Path) -> Bundle:
    """Parse and validate ``path/bundle.json``."""
    root = Path(path)
    manifest = root / "bundle.json"
    if not manifest.is_file():
        raise BundleError(f"{root} is not an export bundle (no bundle.json)", hint="pass a folder made by mambaesr-edge export")
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {manifest}: {exc}", hint="re-run mambaesr-edge export") from exc
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise BundleError(f"{manifest}: format {found!r} is not {BUNDLE_FORMAT!r}", hint="re-export with this version")
    config = ModelConfig.from_dict(_get(raw, "config", dict, manifest))
    scale = _get(raw, "scale", int, manifest)
    if scale != config.scale:
        raise BundleError(f"{manifest}: scale {scale} disagrees with config scale {config.scale}", hint="re-export")
    precision = _get(raw, "precision", str, manifest)
    if precision not in ("fp16", "fp32"):
        raise BundleError(f"{manifest}: precision must be fp16 or fp32, got {precision!r}", hint="re-export")
    tile, overlap, batch = (_get(raw, k, int, manifest) for k in ("tile", "overlap", "batch"))
    if tile < 1 or batch < 1 or overlap < 0 or 2 * overlap > tile:
        raise BundleError(f"{manifest}: invalid tile {tile} / overlap {overlap} / batch {batch}", hint="re-export")
    fp16 = raw.get("onnx_fp16")
    return Bundle(
        root=root,
        config=config,
        scale=scale,
        profile=str(raw.get("profile", "")),
        precision=precision,
        tile=tile,
        overlap=overlap,
        batch=batch,
        dynamic_hw=_get(raw, "dynamic_hw", bool, manifest),
        input_name=_get(raw, "input_name", str, manifest),
        output_name=_get(raw, "output_name", str, manifest),
        onnx=_onnx_entry(raw.get("onnx"), manifest),
        onnx_fp16=_onnx_entry(fp16, manifest) if fp16 is not None else None,
        weights_sha256=_get(raw, "weights_sha256", str, manifest),
        max_tokens=raw["max_tokens"] if isinstance(raw.get("max_tokens"), int) and raw["max_tokens"] > 0 else None,
    )


@dataclass(frozen=True)
class EngineEnvironment:
    """What the engine must match here: this GPU and this TensorRT."""

    gpu_name: str
    compute_capability: str  # "8.7"
    tensorrt_version: str  # "10.3.0"


def read_engine_manifest(path: str | Path) -> dict:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read engine manifest {path}: {exc}", hint="rebuild: mambaesr-edge build-engine BUNDLE") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"engine manifest {path} is not a JSON object", hint="rebuild: mambaesr-edge build-engine BUNDLE")
    return raw


def _trt_release(version: str) -> tuple[str, ...]:
    """Engines are tied to the TensorRT release: compare major.minor.patch (build numbers may differ)."""
    return tuple(version.strip().split(".")[:3])


def engine_manifest_problems(
    manifest: dict,
    env: EngineEnvironment,
    *,
    weights_sha256: str | None = None,
    onnx_sha256: str | None = None,
) -> list[str]:
    """Why this engine cannot run here (empty list: it can). Pure: compares strings only."""
    problems = []
    trt = str(manifest.get("tensorrt", manifest.get("tensorrt_version", "")))
    gpu = str(manifest.get("gpu_name", manifest.get("gpu", "")))
    cc = str(manifest.get("compute_capability", ""))
    if not trt:
        problems.append("manifest names no TensorRT version")
    elif _trt_release(trt) != _trt_release(env.tensorrt_version):
        problems.append(f"built with TensorRT {trt}, this is TensorRT {env.tensorrt_version}")
    if not cc:
        problems.append("manifest names no compute capability")
    elif cc.strip() != env.compute_capability.strip():
        problems.append(f"built for compute capability {cc}, this GPU is {env.compute_capability}")
    if not gpu:
        problems.append("manifest names no GPU")
    elif gpu.strip() != env.gpu_name.strip():
        problems.append(f"built on GPU {gpu!r}, this GPU is {env.gpu_name!r}")
    for key, expected in (("weights_sha256", weights_sha256), ("onnx_sha256", onnx_sha256)):
        if expected is not None and manifest.get(key) != expected:
            problems.append(f"{key} {str(manifest.get(key))[:12]}... does not match the bundle's {expected[:12]}...")
    return problems
