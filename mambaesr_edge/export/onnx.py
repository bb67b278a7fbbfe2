"""PyTorch -> ONNX through the exportable scan, with checks and metadata.

Exporter: the TorchScript-based one (`torch.onnx.export(..., dynamo=False)`). Measured on torch 2.13 with the DVMSR
preset at a 64x64 tile, both exporters give the same outputs (max abs error vs PyTorch 4e-6 and 6e-6); the dynamo
exporter's raw graph is cleaner (2,925 nodes vs 6,230, the TorchScript one keeps shape arithmetic as
Shape/Gather/Constant nodes) but after onnxslim the TorchScript graph is as small (2,901 nodes). We keep the
TorchScript exporter because (1) it needs no extra package (the dynamo exporter needs onnxscript, which is not in
the `export` extra and not on JetPack images), (2) it is 1.5x faster here, and (3) it traces shape arithmetic, which
is what makes the dynamic-H/W export below possible; torch.export would guard on the scan's Python control flow
over L and specialise. The cost: this exporter is deprecated upstream; the dynamo path is one argument away.

Static export (default): input "lr" (N, 3, tile, tile) float32 -> output "sr" (N, 3, s*tile, s*tile) float32.

Dynamic H/W (`dynamic_hw=True`): the scan's recursion depth is fixed when traced, so the chunked scan's recurrence
is traced with a fixed depth (scan.fixed_capacity), shape-generic, sized for `max_tokens` = h*w; the graph is
then right for any h*w <= capacity (16 ** k >= max_tokens; recorded in the metadata) and fails loudly above it.
Batch is dynamic too. Only single-order (raster) configs can be exported dynamically: other scan orders are
permutations built for one H x W at trace time.

Plugin graph (`plugin=True`, export/plugin_graph.py): every selective scan is one custom node for the TensorRT
plugin (TensorRT only; ONNX Runtime has no such op), traced from the same model code.

FP16 variant (`precision="fp16"`): the model's weights and activations are converted to half, the scan casts to
fp32 internally (scan.py), and I/O stays float32 (a Cast at each end). Nodes that compute in float32 in that graph
(the scan) are renamed with the prefix `fp32/`, so a TensorRT build can pin them to fp32 by name (tensorrt.py).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, DependencyMissingError, MambaESRError
from ..fileio import atomic_write, disk_full_error
from ..machine import package_versions
from ..model import MambaSR
from ..native_build import PLUGIN_NAMESPACE
from ..presets import ModelConfig
from ..scan import fixed_capacity, substituted
from .plugin_graph import check_plugin_nodes, fold_transposes, plugin_scan

log = logging.getLogger(__name__)

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
DEFAULT_OPSET = 17
FORBIDDEN_OPS = frozenset({"Loop", "Scan", "If", "SequenceConstruct", "SequenceAt", "SequenceInsert"})
FP32_PREFIX = "fp32/"
META_PREFIX = "mambaesr_edge."
META_FORMAT = "mambaesr-edge-onnx/1"


class OnnxExportError(MambaESRError):
    """The exported graph is unusable (forbidden ops, checker failure); a bug or an unsupported config."""


@dataclass(frozen=True)
class OnnxExport:
    """What export_onnx wrote."""

    path: Path
    sha256: str
    opset: int
    precision: str
    input_shape: tuple[int, int, int, int]
    dynamic_hw: bool
    max_tokens: int | None  # capacity of the fixed-depth scan: largest h*w a dynamic graph supports (else None)
    node_count: int
    op_counts: dict[str, int] = field(default_factory=dict)
    simplifier: str | None = None  # e.g. "onnxslim 0.1.98", None when not simplified


def require_onnx():
    """Import onnx or say how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise DependencyMissingError(
            "ONNX export needs the onnx package, which is not installed",
            hint="pip install 'mambaesr-edge[export]'  (onnx + onnxruntime)",
        ) from exc
    return onnx


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _ExportWrapper(nn.Module):
    """float32 (N,3,h,w) -> float32 (N,3,sh,sw) through the chunked scan; fp16 converts the model, keeps float32 I/O."""

    def __init__(self, model: MambaSR, precision: str) -> None:
        super().__init__()
        self.half = precision == "fp16"
        self.model = copy.deepcopy(model).half() if self.half else model

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        x = lr.half() if self.half else lr
        out = self.model(x, scan_impl="chunked")
        return out.float() if self.half else out


def export_onnx(
    model: MambaSR,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int, int],
    precision: str = "fp32",
    dynamic_hw: bool = False,
    max_tokens: int | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
    simplify: bool = True,
    plugin: bool = False,
) -> OnnxExport:
    """Export `model` to `path`, check it (no Loop/Scan, onnx.checker, strict shape inference) and add metadata.

    `input_shape` is the traced (N, 3, h, w); with dynamic_hw the graph accepts any N and any h*w <= the capacity
    chosen for `max_tokens` (default h*w of input_shape). `max_tokens` without dynamic_hw traces the same
    fixed-depth scan with static shapes (what the cost model uses to see a dynamic graph's structure).
    `plugin`: each scan becomes one custom node for the TensorRT plugin (plugin_graph.py), checked structurally.
    """
    onnx = require_onnx()
    if opset < 17:
        raise ConfigError(f"opset {opset} is too old", hint="use opset >= 17 (LayerNormalization is a single op from 17)")
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"unknown precision {precision!r}", hint="fp32 or fp16")
    n, c, h, w = input_shape
    if c != model.config.in_channels or min(n, h, w) < 1:
        raise ConfigError(f"bad input shape {input_shape}", hint=f"(N, {model.config.in_channels}, h, w) with N, h, w >= 1")
    if dynamic_hw and model.config.scan_orders != ("raster",):
        raise ConfigError(
            f"dynamic H/W export needs the single raster scan order, this model uses {model.config.scan_orders}",
            hint="export with a static tile (drop --dynamic): other orders are permutations fixed at trace time",
        )
    path = Path(path)
    wrapper = _ExportWrapper(model.eval(), precision).eval()
    example = torch.rand(input_shape, generator=torch.Generator().manual_seed(0))
    dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}}
    if dynamic_hw and max_tokens is None:
        max_tokens = h * w
    recurrence = fixed_capacity(max_tokens) if max_tokens else contextlib.nullcontext(None)
    scan = substituted(plugin_scan) if plugin else contextlib.nullcontext()
    buffer = io.BytesIO()
    with recurrence as capacity, scan, warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes if dynamic_hw else None,
            do_constant_folding=True,
            custom_opsets={PLUGIN_NAMESPACE: 1} if plugin else None,
        )
    log.debug("torch.onnx.export: %d warnings (tracer warnings about shape-dependent Python control flow are expected)", len(caught))
    proto = onnx.load_from_string(buffer.getvalue())
    if plugin:
        fold_transposes(proto)
    check_graph(proto)
    simplifier = None
    if simplify:
        proto, simplifier = _simplify(proto)
        check_graph(proto)
    if plugin:
        problems = check_plugin_nodes(proto, model.config.n_mixers)
        if problems:
            raise OnnxExportError("the plugin graph breaks the plugin contract: " + "; ".join(problems), hint="report this bug")
    if precision == "fp16":
        mark_fp32_nodes(proto)
    _set_metadata(proto, metadata or {})
    data = proto.SerializeToString()
    existed = path.exists()
    try:
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        full = disk_full_error(exc, f"{path} ({len(data) / 1e6:.1f} MB)",
                               "its previous version is intact" if existed else "no partial file was left",
                               "write to another disk, then export again")
        if full is None:
            raise
        raise full from exc
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return OnnxExport(
        path=path,
        sha256=sha256_bytes(data),
        opset=opset,
        precision=precision,
        input_shape=tuple(input_shape),
        dynamic_hw=dynamic_hw,
        max_tokens=capacity,
        node_count=len(proto.graph.node),
        op_counts=dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        simplifier=simplifier,
    )


def check_graph(proto) -> None:
    """No Loop/Scan/If/Sequence ops anywhere; onnx.checker (full) passes; strict shape inference passes."""
    onnx = require_onnx()
    bad = sorted({node.op_type for node in proto.graph.node if node.op_type in FORBIDDEN_OPS})
    if bad:
        raise OnnxExportError(
            f"the exported graph contains {', '.join(bad)} ops (slow and fragile in TensorRT)",
            hint="export through the chunked scan (scan_impl='chunked'); this is a bug if it already does",
        )
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxExportError(f"onnx.checker rejected the exported graph: {str(exc).splitlines()[0]}", hint="report this bug") from exc


def _simplify(proto):
    """Simplify with onnxslim when it is installed (maintained, pure Python); else return the graph unchanged."""
    try:
        import onnxslim
    except ImportError:
        log.info("onnxslim is not installed: graph left unsimplified (pip install onnxslim)")
        return proto, None
    before = len(proto.graph.node)
    slim = onnxslim.slim(proto)
    log.info("onnxslim: %d -> %d nodes", before, len(slim.graph.node))
    return slim, f"onnxslim {getattr(onnxslim, '__version__', '?')}"


def mark_fp32_nodes(proto) -> int:
    """Prefix with FP32_PREFIX every node that outputs a float32 tensor (in the fp16 graph: the scan). Returns the count."""
    onnx = require_onnx()
    inferred = onnx.shape_inference.infer_shapes(proto)
    float32 = {
        vi.name
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    count = 0
    for node in proto.graph.node:
        if any(out in float32 for out in node.output) and not node.name.startswith(FP32_PREFIX):
            node.name = FP32_PREFIX + (node.name or f"{node.op_type}_{count}")
            count += 1
    return count


def build_metadata(
    config: ModelConfig, *, weights_sha256: str, profile: str, tile: int, batch: int, dynamic_hw: bool, precision: str
) -> dict[str, str]:
    """The metadata_props written into every exported graph (values are strings; JSON where structured)."""
    return {
        "format": META_FORMAT,
        "scale": str(config.scale),
        "config": config.to_json(),
        "weights_sha256": weights_sha256,
        "profile": profile,
        "tile": str(tile),
        "batch": str(batch),
        "dynamic_hw": json.dumps(dynamic_hw),
        "precision": precision,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "versions": json.dumps(package_versions(), sort_keys=True),
    }


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, str(value)


def read_metadata(path: str | Path) -> dict[str, object]:
    """Read and validate our metadata from an ONNX file: JSON values are parsed (never evaluated), config validated."""
    onnx = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    raw = {p.key.removeprefix(META_PREFIX): p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    if raw.get("format") != META_FORMAT:
        raise ConfigError(f"{path} carries no mambaesr-edge metadata (format {raw.get('format')!r})", hint="export it with mambaesr-edge export")
    try:
        meta: dict[str, object] = dict(raw)
        meta["config"] = ModelConfig.from_json(raw["config"])
        meta["versions"] = json.loads(raw["versions"])
        meta["dynamic_hw"] = json.loads(raw["dynamic_hw"])
        for key in ("scale", "tile", "batch"):
            meta[key] = int(raw[key])
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} has malformed mambaesr-edge metadata: {exc}", hint="re-export the bundle") from exc
    if meta["scale"] != meta["config"].scale:  # type: ignore[union-attr]
        raise ConfigError(f"{path}: metadata scale {meta['scale']} != config scale", hint="re-export the bundle")
    return meta
