"""The TensorRT engine's side of the artifact contract: its manifest (model.engine.json: what the engine was built with
and from) and the one rule that says whether an engine may run here. Torch-free; JSON only, never eval.
The bundle's files and bundle.json are ``bundle.py``'s; build-engine, the TensorRT backend and doctor import this.

When an engine is stale (``engine_problems``; one rule for build-engine, upscale, eval and bench):
- the engine file or its manifest is missing, or the manifest is unreadable or of another format;
- GPU: its name or compute capability differs from this GPU's, as the CUDA runtime names them (engines are
  built for one GPU model);
- TensorRT: the release (major.minor.patch) differs. A build-number change (10.3.0.26 -> 10.3.0.30, a JetPack
  respin) keeps the release and the engine; if TensorRT itself still refuses the plan, deserialising fails with
  the same rebuild hint;
- the engine was built from other weights (weights sha256), another ONNX graph (the sha256 of the graph file now
  in the bundle), for another profile, or the engine file itself changed since its manifest was written;
- a custom-op plugin library recorded in the manifest is missing or its sha256 differs.
A value this machine cannot tell (an empty GPU name or capability) is not compared; an empty value in the
manifest is a problem. A stale engine is refused, never silently replaced (runtime/source.py says why).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bundle import ENGINE_FILE, Bundle
from .errors import BundleError
from .fileio import atomic_write, sha256_file

__all__ = [
    "ENGINE_MANIFEST_FORMAT",
    "EngineEnvironment",
    "EngineManifest",
    "bundle_engine_problems",
    "engine_manifest_path",
    "engine_problems",
    "read_engine_manifest",
    "standalone_engine_problems",
    "tensorrt_release",
    "write_engine_manifest",
]

log = logging.getLogger(__name__)
ENGINE_MANIFEST_FORMAT = "mambaesr-edge-engine/1"
_REBUILD = "rebuild: mambaesr-edge build-engine BUNDLE"


@dataclass(frozen=True)
class EngineEnvironment:
    """What an engine must match here: this GPU (as the CUDA runtime names it) and this TensorRT."""

    gpu_name: str
    compute_capability: str  # "8.7"
    tensorrt_version: str  # "10.3.0.30"


@dataclass(frozen=True)
class EngineManifest:
    """model.engine.json: what the engine was built with (TensorRT, GPU) and from (ONNX, weights, profile, plugin)."""

    engine: str
    engine_sha256: str
    tensorrt: str
    gpu_name: str
    compute_capability: str
    onnx_file: str
    onnx_sha256: str
    weights_sha256: str
    profile: str
    input_name: str = "lr"
    precision: str = "fp32"
    shapes: dict[str, list[int]] = field(default_factory=dict)
    scale: int | None = None
    plugin_file: str | None = None  # custom-op library the engine needs (loaded before deserialising)
    plugin_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # settings, created, ...

    def to_dict(self) -> dict[str, Any]:
        raw = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {"format": ENGINE_MANIFEST_FORMAT, **raw, **{k: v for k, v in self.extra.items() if k not in raw}}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EngineManifest:
        """Lenient: missing fields become "" (and then count as problems); ``tensorrt_version`` / ``gpu`` are
        accepted for ``tensorrt`` / ``gpu_name`` (hand-written manifests)."""
        def text(key: str, alias: str | None = None) -> str:
            value = raw.get(key, raw.get(alias, "") if alias else "")
            return "" if value is None else str(value)

        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        scale = raw.get("scale")
        shapes = raw.get("shapes")
        return cls(
            engine=text("engine") or ENGINE_FILE, engine_sha256=text("engine_sha256"),
            tensorrt=text("tensorrt", "tensorrt_version"), gpu_name=text("gpu_name", "gpu"),
            compute_capability=text("compute_capability"), onnx_file=text("onnx_file"), onnx_sha256=text("onnx_sha256"),
            weights_sha256=text("weights_sha256"), profile=text("profile"), input_name=text("input_name") or "lr",
            precision=text("precision") or "fp32", shapes=shapes if isinstance(shapes, dict) else {},
            scale=scale if isinstance(scale, int) and not isinstance(scale, bool) and scale > 0 else None,
            plugin_file=text("plugin_file") or None, plugin_sha256=text("plugin_sha256") or None,
            extra={k: v for k, v in raw.items() if k not in names and k not in ("format", "tensorrt_version", "gpu")},
        )  # fmt: skip


def engine_manifest_path(engine: str | Path) -> Path:
    """The manifest beside an engine: ``NAME.json`` (model.engine -> model.engine.json, x.trt -> x.trt.json)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_engine_manifest(path: str | Path) -> EngineManifest:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read engine manifest {path}: {exc}", hint=_REBUILD) from exc
    if not isinstance(raw, dict):
        raise BundleError(f"engine manifest {path} is not a JSON object", hint=_REBUILD)
    if raw.get("format", ENGINE_MANIFEST_FORMAT) != ENGINE_MANIFEST_FORMAT:
        raise BundleError(f"engine manifest {path} is not a {ENGINE_MANIFEST_FORMAT} manifest", hint=_REBUILD)
    return EngineManifest.from_dict(raw)


def write_engine_manifest(path: str | Path, manifest: EngineManifest) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def tensorrt_release(version: str) -> tuple[str, ...]:
    """'10.3.0.30' -> ('10', '3', '0'): engines are tied to the TensorRT release, not its build number."""
    return tuple(version.strip().split(".")[:3])


def engine_problems(
    manifest: EngineManifest | dict,
    env: EngineEnvironment,
    *,
    weights_sha256: str | None = None,
    onnx_sha256: str | None = None,
    profile: str | None = None,
    engine_sha256: str | None = None,
    plugin_sha256: str | None = None,
) -> list[str]:
    """Why this engine may not run here ([] = it may). Pure: compares what the manifest recorded with ``env`` and
    with the current sha256s the caller passes (None: not checked). The rule is in the module docstring."""
    m = manifest if isinstance(manifest, EngineManifest) else EngineManifest.from_dict(manifest)
    problems = []
    if not m.tensorrt:
        problems.append("manifest names no TensorRT version")
    elif env.tensorrt_version and tensorrt_release(m.tensorrt) != tensorrt_release(env.tensorrt_version):
        problems.append(f"TensorRT version changed: built with TensorRT {m.tensorrt}, this is TensorRT {env.tensorrt_version}")
    if not m.compute_capability:
        problems.append("manifest names no compute capability")
    elif env.compute_capability and m.compute_capability.strip() != env.compute_capability.strip():
        problems.append(f"compute capability changed: built for compute capability {m.compute_capability}, this GPU is {env.compute_capability}")
    if not m.gpu_name:
        problems.append("manifest names no GPU")
    elif env.gpu_name and m.gpu_name.strip() != env.gpu_name.strip():
        problems.append(f"GPU changed: built on GPU {m.gpu_name!r}, this GPU is {env.gpu_name!r}")
    if weights_sha256 is not None and m.weights_sha256 != weights_sha256:
        problems.append(f"weights changed: weights_sha256 {m.weights_sha256[:12]}... of the engine, {weights_sha256[:12]}... now")
    if onnx_sha256 is not None and m.onnx_sha256 != onnx_sha256:
        problems.append(f"ONNX graph changed: onnx_sha256 {m.onnx_sha256[:12]}... of the engine, {onnx_sha256[:12]}... now")
    if profile is not None and m.profile != profile:
        problems.append(f"profile changed: engine for {m.profile!r}, bundle for {profile!r}")
    if engine_sha256 is not None and m.engine_sha256 != engine_sha256:
        problems.append(f"{m.engine} was replaced or corrupted (sha256 differs from the manifest)")
    if m.plugin_file and plugin_sha256 is not None and m.plugin_sha256 != plugin_sha256:
        problems.append(f"plugin library {m.plugin_file} changed since the engine was built (sha256 differs)")
    return problems


def _file_problems(engine: Path) -> tuple[EngineManifest | None, list[str]]:
    manifest_path = engine_manifest_path(engine)
    if not engine.is_file():
        return None, [f"no engine: {engine.name} is missing"]
    if not manifest_path.is_file():
        return None, [f"no manifest: {manifest_path.name} is missing, so the engine's origin is unknown"]
    manifest = read_engine_manifest(manifest_path)
    if manifest.plugin_file:
        plugin = engine.parent / manifest.plugin_file
        if not plugin.is_file():
            return manifest, [f"the engine needs the plugin library {manifest.plugin_file}, which is missing"]
    return manifest, []


def _plugin_sha(engine: Path, manifest: EngineManifest) -> str | None:
    return sha256_file(engine.parent / manifest.plugin_file) if manifest.plugin_file else None


def bundle_engine_problems(bundle: Bundle, env: EngineEnvironment) -> list[str]:
    """``engine_problems`` for the bundle's model.engine against the bundle as it is now (files hashed here).
    Raises BundleError when the manifest exists but cannot be read."""
    manifest, problems = _file_problems(bundle.engine_path)
    if manifest is None or problems:
        return problems
    onnx = bundle.root / manifest.onnx_file if manifest.onnx_file else None
    if onnx is None or Path(manifest.onnx_file).name != manifest.onnx_file or not onnx.is_file():
        return [f"the engine's ONNX graph {manifest.onnx_file!r} is not in the bundle"]
    return engine_problems(
        manifest, env, weights_sha256=bundle.weights_sha256, onnx_sha256=sha256_file(onnx), profile=bundle.profile,
        engine_sha256=sha256_file(bundle.engine_path), plugin_sha256=_plugin_sha(bundle.engine_path, manifest),
    )  # fmt: skip


def standalone_engine_problems(
    engine: str | Path, env: EngineEnvironment, *, weights_sha256: str | None = None, onnx_sha256: str | None = None
) -> list[str]:
    """``engine_problems`` for an engine file outside a bundle (its manifest beside it); the weights and ONNX are
    compared only when the caller knows them."""
    engine = Path(engine)
    manifest, problems = _file_problems(engine)
    if manifest is None or problems:
        return problems
    return engine_problems(
        manifest, env, weights_sha256=weights_sha256, onnx_sha256=onnx_sha256, engine_sha256=sha256_file(engine),
        plugin_sha256=_plugin_sha(engine, manifest),
    )  # fmt: skip
