"""The artifact contract between export and runtime: the bundle folder and its bundle.json (the engine manifest and
the rule that says whether a TensorRT engine may run here: ``engine_manifest.py``). Torch-free; JSON only, never eval.

Writers (``export/``, ``mambaesr-edge build-engine``) and readers (``runtime/``, ``bench``, ``eval``, the CLI) all
import the names below; nothing else knows a file name or a field of these files.

    bundle/
      bundle.json          Bundle.to_dict() (format BUNDLE_FORMAT)
      model.onnx           fp32 graph (OnnxFile in bundle.json, sha256-checked when read)
      model_fp16.onnx      optional fp16 graph, scan kept in fp32
      model_trt.onnx       optional (TensorRT profiles with scan_plugin): each scan is ONE custom node that TensorRT's
      model_trt_fp16.onnx  ONNX parser maps to the plugin (PluginSources); fp16 twin when the profile is fp16
      plugin/              the plugin's CUDA sources (sha256 each in bundle.json), built on the device by
      build_plugin.sh      nvcc into libmambaesr_scan_plugin.so (named by the engine manifest, loaded before deserialising)
      parity.json cost.json build_engine.sh timing.cache
      model.engine         optional, built ON the target device
      model.engine.json    EngineManifest (engine_manifest.py): what the engine was built with and from

The engine manifest and the one staleness rule live in ``engine_manifest.py``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .fileio import atomic_write, sha256_file
from .presets import ModelConfig

__all__ = [
    "BUILD_PLUGIN_SCRIPT_FILE",
    "BUILD_SCRIPT_FILE",
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "COST_FILE",
    "ENGINE_FILE",
    "ENGINE_MANIFEST_FILE",
    "ONNX_FILE",
    "ONNX_FP16_FILE",
    "ONNX_TRT_FILE",
    "ONNX_TRT_FP16_FILE",
    "PARITY_FILE",
    "PLUGIN_DIR",
    "PLUGIN_LIBRARY_FILE",
    "TIMING_CACHE_FILE",
    "Bundle",
    "BundleError",
    "OnnxFile",
    "PluginSources",
    "is_bundle",
    "read_bundle",
    "write_bundle",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "mambaesr-edge-bundle/1"
BUNDLE_FILE = "bundle.json"
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model_fp16.onnx"
PARITY_FILE = "parity.json"
COST_FILE = "cost.json"
ENGINE_FILE = "model.engine"
ENGINE_MANIFEST_FILE = ENGINE_FILE + ".json"
TIMING_CACHE_FILE = "timing.cache"
BUILD_SCRIPT_FILE = "build_engine.sh"
ONNX_TRT_FILE = "model_trt.onnx"
ONNX_TRT_FP16_FILE = "model_trt_fp16.onnx"
PLUGIN_DIR = "plugin"
PLUGIN_LIBRARY_FILE = "libmambaesr_scan_plugin.so"
BUILD_PLUGIN_SCRIPT_FILE = "build_plugin.sh"
PRECISIONS = ("fp32", "fp16")
_REEXPORT = "re-run mambaesr-edge export"


@dataclass(frozen=True)
class OnnxFile:
    """One ONNX graph of a bundle: a plain file name inside it, its sha256, opset (and, as written, node count)."""

    file: str
    sha256: str
    opset: int
    nodes: int | None = None
    simplifier: str | None = None


@dataclass(frozen=True)
class PluginSources:
    """The custom-op plugin the bundle's model_trt graphs need: the identity its ONNX nodes name (op_type, plugin_version,
    plugin_namespace), its sources in PLUGIN_DIR (file name -> sha256), the library `build_script` builds."""

    name: str
    version: str
    namespace: str
    sources: dict[str, str]
    library: str = PLUGIN_LIBRARY_FILE
    build_script: str = BUILD_PLUGIN_SCRIPT_FILE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dir": PLUGIN_DIR}


@dataclass(frozen=True)
class Bundle:
    """bundle.json, typed. ``root`` is the folder (not stored); ``extra`` keeps the export's report keys (cost,
    tensorrt status, versions, ...) that no reader needs to interpret."""

    root: Path
    config: ModelConfig
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
    onnx_trt: OnnxFile | None = None  # the plugin graph (each scan one custom node); None: the bundle has none
    onnx_trt_fp16: OnnxFile | None = None
    plugin: PluginSources | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def engine_path(self) -> Path:
        return self.root / ENGINE_FILE

    @property
    def engine_manifest_path(self) -> Path:
        return self.root / ENGINE_MANIFEST_FILE

    def onnx_entry(self, precision: str = "fp32") -> OnnxFile:
        """The graph for ``precision``: fp16 falls back to the fp32 graph when the bundle has none."""
        return self.onnx_fp16 if precision == "fp16" and self.onnx_fp16 is not None else self.onnx

    def trt_entry(self, precision: str = "fp32") -> OnnxFile | None:
        """The plugin graph for ``precision`` (fp16 falls back to the fp32 plugin graph); None when there is none."""
        return self.onnx_trt_fp16 if precision == "fp16" and self.onnx_trt_fp16 is not None else self.onnx_trt

    def onnx_path(self, precision: str = "fp32", *, verify: bool = True) -> Path:
        """The ONNX file for ``precision`` (see ``onnx_entry``), sha256-checked against bundle.json."""
        if precision == "fp16" and self.onnx_fp16 is None:
            log.info("bundle %s has no fp16 ONNX; using the fp32 graph", self.root)
        entry = self.onnx_entry(precision)
        path = self.root / entry.file
        if not path.is_file():
            raise BundleError(f"bundle {self.root} lacks {entry.file}", hint=_REEXPORT)
        if verify and sha256_file(path) != entry.sha256:
            raise BundleError(
                f"{path} does not match the sha256 in bundle.json (stale or corrupt file)",
                hint="re-run mambaesr-edge export --force for this bundle",
            )
        return path

    def to_dict(self) -> dict[str, Any]:
        """bundle.json's content (``extra`` keys after the contract's)."""
        def entry(f: OnnxFile | None) -> dict | None:
            return None if f is None else {k: v for k, v in asdict(f).items() if v is not None}

        plugin_keys = {} if self.onnx_trt is None else {  # absent from bundles without a plugin graph
            "onnx_trt": entry(self.onnx_trt), "onnx_trt_fp16": entry(self.onnx_trt_fp16),
            "plugin": self.plugin.to_dict() if self.plugin is not None else None,
        }  # fmt: skip
        return {
            "format": BUNDLE_FORMAT,
            "config": json.loads(self.config.to_json()),
            "scale": self.scale,
            "profile": self.profile,
            "precision": self.precision,
            "tile": self.tile,
            "overlap": self.overlap,
            "batch": self.batch,
            "dynamic_hw": self.dynamic_hw,
            "max_tokens": self.max_tokens,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "onnx": entry(self.onnx),
            "onnx_fp16": entry(self.onnx_fp16),
            "weights_sha256": self.weights_sha256,
            **plugin_keys,
            **{k: v for k, v in self.extra.items() if k not in _CONTRACT_KEYS},
        }


_CONTRACT_KEYS = frozenset({
    "format", "config", "scale", "profile", "precision", "tile", "overlap", "batch", "dynamic_hw", "max_tokens",
    "input_name", "output_name", "onnx", "onnx_fp16", "weights_sha256", "onnx_trt", "onnx_trt_fp16", "plugin",
})  # fmt: skip


def is_bundle(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / BUNDLE_FILE).is_file()


def write_bundle(bundle: Bundle) -> Path:
    """Write ``bundle.root/bundle.json`` atomically."""
    path = bundle.root / BUNDLE_FILE
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(bundle.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def _get(raw: dict, key: str, kind: type | tuple[type, ...], where: Path):
    if key not in raw:
        raise BundleError(f"{where}: missing field {key!r}", hint=_REEXPORT)
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})", hint="re-run export")
    return value


def _onnx_entry(raw: object, where: Path) -> OnnxFile:
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: onnx entry must be an object", hint=_REEXPORT)
    name = _get(raw, "file", str, where)
    if Path(name).name != name or name in ("", ".", ".."):
        raise BundleError(f"{where}: onnx file {name!r} must be a plain file name inside the bundle", hint="re-export")
    nodes, simplifier = raw.get("nodes"), raw.get("simplifier")
    return OnnxFile(
        name, _get(raw, "sha256", str, where), _get(raw, "opset", int, where),
        nodes if isinstance(nodes, int) else None, simplifier if isinstance(simplifier, str) else None,
    )  # fmt: skip


def _plain_name(name: object, what: str, where: Path) -> str:
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise BundleError(f"{where}: {what} {name!r} must be a plain file name", hint=_REEXPORT)
    return name


def _plugin_entry(raw: object, where: Path) -> PluginSources:
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: plugin entry must be an object", hint=_REEXPORT)
    sources = _get(raw, "sources", dict, where)
    for name, digest in sources.items():
        _plain_name(name, "plugin source", where)
        if not isinstance(digest, str):
            raise BundleError(f"{where}: plugin source {name!r} has no sha256", hint=_REEXPORT)
    return PluginSources(
        _get(raw, "name", str, where), _get(raw, "version", str, where), _get(raw, "namespace", str, where), dict(sources),
        _plain_name(raw.get("library", PLUGIN_LIBRARY_FILE), "plugin library", where),
        _plain_name(raw.get("build_script", BUILD_PLUGIN_SCRIPT_FILE), "plugin build script", where),
    )  # fmt: skip


def read_bundle(path: str | Path) -> Bundle:
    """Parse and validate ``path/bundle.json``."""
    root = Path(path)
    manifest = root / BUNDLE_FILE
    if not manifest.is_file():
        raise BundleError(f"{root} is not an export bundle (no {BUNDLE_FILE})", hint="pass a folder made by mambaesr-edge export")
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {manifest}: {exc}", hint=_REEXPORT) from exc
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise BundleError(f"{manifest}: format {found!r} is not {BUNDLE_FORMAT!r}", hint="re-export with this version")
    config = ModelConfig.from_dict(_get(raw, "config", dict, manifest))
    scale = _get(raw, "scale", int, manifest)
    if scale != config.scale:
        raise BundleError(f"{manifest}: scale {scale} disagrees with config scale {config.scale}", hint="re-export")
    precision = _get(raw, "precision", str, manifest)
    if precision not in PRECISIONS:
        raise BundleError(f"{manifest}: precision must be fp16 or fp32, got {precision!r}", hint="re-export")
    tile, overlap, batch = (_get(raw, k, int, manifest) for k in ("tile", "overlap", "batch"))
    if tile < 1 or batch < 1 or overlap < 0 or 2 * overlap > tile:
        raise BundleError(f"{manifest}: invalid tile {tile} / overlap {overlap} / batch {batch}", hint="re-export")
    fp16 = raw.get("onnx_fp16")
    trt, trt_fp16, plugin = raw.get("onnx_trt"), raw.get("onnx_trt_fp16"), raw.get("plugin")
    if trt is not None and plugin is None:
        raise BundleError(f"{manifest}: onnx_trt without its plugin entry", hint=_REEXPORT)
    max_tokens = raw.get("max_tokens")
    return Bundle(
        root=root,
        config=config,
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
        max_tokens=max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0 else None,
        onnx_trt=_onnx_entry(trt, manifest) if trt is not None else None,
        onnx_trt_fp16=_onnx_entry(trt_fp16, manifest) if trt is not None and trt_fp16 is not None else None,
        plugin=_plugin_entry(plugin, manifest) if trt is not None else None,
        extra={k: v for k, v in raw.items() if k not in _CONTRACT_KEYS},
    )
