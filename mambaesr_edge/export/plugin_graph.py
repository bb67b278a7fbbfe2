"""The plugin graph (model_trt.onnx): the model traced with every selective scan as ONE custom node, which
TensorRT's ONNX parser maps to the csrc/ plugin (IPluginV3, mambaesr_edge/csrc/README.md is the contract).

How: the same model code as every other export; `export_onnx(..., plugin=True)` traces it inside
``scan.substituted(plugin_scan)``, so each `selective_scan` call becomes `_PluginScan.apply`, an autograd Function
whose forward computes the chunked scan (so tracing sees real values) and whose `symbolic` emits the node:
op_type PLUGIN_NAME in the domain PLUGIN_NAMESPACE (declared in opset_import), attributes `plugin_version`,
`plugin_namespace` and the int fields (`delta_softplus`, `has_D`, `has_z`, `has_delta_bias`, `token_major`). The
parser finds a creator by op_type + plugin_version + plugin_namespace and passes the attributes the creator
declares as fields (REFERENCE section 7); the node's domain is only for ONNX's checker.

`fold_transposes` then removes the transposes around each node: an input produced by Transpose(perm [0, 2, 1]) is
read from the transpose's input with `token_major` = 1 for it, and an output whose every consumer is such a
Transpose is written token-major. For the model's mixers that gives token_major = [0, 1, z, 1, 1, 1]: u is the
causal conv's (batch, Di, L) output, delta / B / C / y the projections' (batch, L, K) tensors; z (single-order
mixers) is read as the in_proj half the conv also reads, (batch, Di, L), so it stays 0. Multi-order mixers run one
node over the K*B stacked orders with no z (the gate follows the inverse permutations), as model.py calls it.

The graph cannot run in ONNX Runtime (no such op there). `check_plugin_nodes` checks it structurally (one node per
mixer, the attributes, no pure-op scan left: no Exp/Einsum/Softplus/Log of activations); `plugin_parity` checks it numerically on
a real tile: ONNX Runtime runs the graph with each custom node cut out (its output fed from PyTorch's scan) and the
custom nodes' inputs and the final output are compared with what PyTorch computed. What it cannot check, the kernel
itself, the GPU harness of tests/test_csrc.py checks against the reference.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import MambaESRError
from ..model import MambaSR
from ..native_build import PLUGIN_FIELDS, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, TOKEN_MAJOR_ORDER, plugin_output_shape
from ..scan import selective_scan, substituted

log = logging.getLogger(__name__)

SCAN_REMNANT_OPS = frozenset({"Exp", "Einsum", "Softplus", "Log", "CumSum"})  # what the pure-op scan is made of
_INPUT_ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")  # the plugin's inputs, optional ones last
_LAYOUT_INPUTS = ("u", "delta", "z", "B", "C")  # inputs with a token_major entry (A, D, delta_bias have none)


class PluginGraphError(MambaESRError):
    """The plugin graph is not what the plugin contract asks for (a bug, or a model the plugin cannot run)."""


class _PluginScan(torch.autograd.Function):
    """One selective scan; traced by torch.onnx.export as one custom node (the plugin)."""

    @staticmethod
    def forward(ctx, delta_softplus: bool, names: tuple[str, ...], *tensors: torch.Tensor) -> torch.Tensor:
        args = dict(zip(names, tensors, strict=True))
        with substituted(None):
            return selective_scan(**args, delta_softplus=delta_softplus, impl="chunked")

    @staticmethod
    def symbolic(g, delta_softplus: bool, names: tuple[str, ...], *tensors):
        flags = {f"{name}_i": int(present) for name, present in (
            ("delta_softplus", delta_softplus), ("has_D", "D" in names), ("has_z", "z" in names),
            ("has_delta_bias", "delta_bias" in names),
        )}  # fmt: skip
        out = g.op(
            f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}", *tensors, plugin_version_s=PLUGIN_VERSION,
            plugin_namespace_s=PLUGIN_NAMESPACE, token_major_i=[0] * len(TOKEN_MAJOR_ORDER), **flags,
        )  # fmt: skip
        out.setType(tensors[0].type())
        return out


def plugin_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False) -> torch.Tensor:
    """`selective_scan`'s signature; the stand-in `export_onnx(plugin=True)` traces (see `scan.substituted`)."""
    given = dict(zip(_INPUT_ORDER, (u, delta, A, B, C, D, z, delta_bias), strict=True))
    present = {name: t for name, t in given.items() if t is not None}
    return _PluginScan.apply(bool(delta_softplus), tuple(present), *present.values())


def plugin_nodes(proto) -> list:
    return [node for node in proto.graph.node if node.op_type == PLUGIN_NAME]


def _attr(node, name: str):
    import onnx

    found = [a for a in node.attribute if a.name == name]
    return onnx.helper.get_attribute_value(found[0]) if found else None


def _set_ints(node, name: str, values: list[int]) -> None:
    for a in node.attribute:
        if a.name == name:
            del a.ints[:]
            a.ints.extend(values)


def input_names(node) -> dict[str, str]:
    """{plugin input name -> tensor name} of a custom node, from its has_* fields."""
    names = ["u", "delta", "A", "B", "C"]
    names += [n for n, flag in (("D", "has_D"), ("z", "has_z"), ("delta_bias", "has_delta_bias")) if _attr(node, flag)]
    return dict(zip(names, node.input, strict=True))


def fold_transposes(proto) -> int:
    """Rewire every custom node to the token-major tensors around it (see the module docstring); removes the
    transposes nothing else reads and sets the node's output type and shape. Returns the transposes removed."""
    import onnx

    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    inferred = onnx.shape_inference.infer_shapes(proto).graph  # the nodes' outputs are typed (symbolic's setType)
    shapes = {vi.name: vi for vi in list(inferred.value_info) + list(inferred.input)}
    graph_outputs = {o.name for o in graph.output}
    folded: set[str] = set()  # outputs of the transposes after the nodes, now written by the nodes themselves

    def is_swap(node) -> bool:
        return node is not None and node.op_type == "Transpose" and list(_attr(node, "perm") or []) == [0, 2, 1]

    for node in plugin_nodes(proto):
        major = [0] * len(TOKEN_MAJOR_ORDER)
        for name, tensor in input_names(node).items():
            source = producer.get(tensor)
            if name in _LAYOUT_INPUTS and is_swap(source):
                node.input[list(node.input).index(tensor)] = source.input[0]
                major[TOKEN_MAJOR_ORDER.index(name)] = 1
        users = [n for n in graph.node if node.output[0] in n.input]
        if users and node.output[0] not in graph_outputs and all(is_swap(u) for u in users):
            shapes.pop(node.output[0], None)
            node.output[0] = users[0].output[0]
            for extra in users[1:]:  # several identical transposes: their readers read the first one's output
                for reader in graph.node:
                    reader.input[:] = [node.output[0] if i == extra.output[0] else i for i in reader.input]
            folded.update(u.output[0] for u in users)
            major[TOKEN_MAJOR_ORDER.index("y")] = 1
        _set_ints(node, "token_major", major)
        u_info = shapes.get(node.input[0])
        elem = u_info.type.tensor_type.elem_type if u_info is not None else onnx.TensorProto.FLOAT
        u_dims = u_info.type.tensor_type.shape.dim if u_info is not None else []
        dims = plugin_output_shape([d.dim_value or d.dim_param or None for d in u_dims], major) if len(u_dims) == 3 else None
        _set_value_info(graph, node.output[0], elem, dims)
    kept = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in folded)]
    del graph.node[:]  # (rebuilding graph.node copies the nodes: done once, after the loop over them)
    graph.node.extend(kept)
    return len(folded) + _remove_dead_nodes(graph)


def _set_value_info(graph, name: str, elem_type: int, dims) -> None:
    import onnx

    kept = [vi for vi in graph.value_info if vi.name != name]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    if not any(o.name == name for o in graph.output):
        graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem_type, dims))


def _remove_dead_nodes(graph) -> int:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    removed = len(graph.node) - len(keep)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    names = {o for n in keep for o in n.output} | {i.name for i in graph.input}
    kept_info = [vi for vi in graph.value_info if vi.name in names]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return removed


def check_plugin_nodes(proto, n_mixers: int) -> list[str]:
    """Problems of a plugin graph against the contract ([] = none): one custom node per mixer (its K orders are
    stacked in the batch), declared domain, identity attributes, every field an int 0/1 (token_major 6 of them),
    inputs matching the has_* fields, no pure-op scan remnant (those ops on activations; A = -exp(A_log) is a
    parameter computation)."""
    problems = []
    nodes = plugin_nodes(proto)
    if len(nodes) != n_mixers:
        problems.append(f"{len(nodes)} {PLUGIN_NAME} nodes for {n_mixers} mixers")
    if nodes and PLUGIN_NAMESPACE not in {o.domain for o in proto.opset_import}:
        problems.append(f"domain {PLUGIN_NAMESPACE!r} is not declared in opset_import")
    for node in nodes:
        where = node.name or node.output[0]
        if node.domain != PLUGIN_NAMESPACE:
            problems.append(f"{where}: domain {node.domain!r}")
        if _attr(node, "plugin_version") != PLUGIN_VERSION.encode() or _attr(node, "plugin_namespace") != PLUGIN_NAMESPACE.encode():
            problems.append(f"{where}: plugin_version / plugin_namespace are not {PLUGIN_VERSION!r} / {PLUGIN_NAMESPACE!r}")
        extra = {a.name for a in node.attribute} - {"plugin_version", "plugin_namespace", *PLUGIN_FIELDS}
        if extra:
            problems.append(f"{where}: attributes the plugin does not declare: {sorted(extra)}")
        for field in PLUGIN_FIELDS:
            value = _attr(node, field)
            values = value if isinstance(value, list) else [value]
            length = len(TOKEN_MAJOR_ORDER) if field == "token_major" else 1
            if value is None or len(values) != length or any(v not in (0, 1) for v in values):
                problems.append(f"{where}: field {field} = {value!r} (need {length} ints of 0/1)")
        expected = 5 + sum(int(_attr(node, f) or 0) for f in ("has_D", "has_z", "has_delta_bias"))
        if len(node.input) != expected:
            problems.append(f"{where}: {len(node.input)} inputs, its fields say {expected}")
    constant = {init.name for init in proto.graph.initializer}
    for n in proto.graph.node:  # computed from parameters alone (A = -exp(A_log)): TensorRT folds these
        if all(i in constant for i in n.input if i):
            constant.update(n.output)
    remnants = sorted({n.op_type for n in proto.graph.node if n.op_type in SCAN_REMNANT_OPS and n.output[0] not in constant})
    if remnants:
        problems.append(f"pure-op scan remnants: {', '.join(remnants)}")
    return problems


# ------------------------------------------------------------------------------------------------ numeric check
@dataclass(frozen=True)
class PluginParity:
    """`plugin_parity`'s verdict for one plugin graph on one real tile."""

    graph: str
    precision: str
    shape: tuple[int, ...]  # the tile batch it ran on
    nodes: int
    worst_input: str  # the custom-node input with the largest relative error
    max_input_rel_err: float  # max |onnx - torch| / max |torch| over every custom node's inputs
    output_max_abs: float  # the graph's sr against PyTorch's
    output_psnr_db: float
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        raw = asdict(self)
        raw["shape"] = list(self.shape)
        raw["output_psnr_db"] = None if math.isinf(self.output_psnr_db) else self.output_psnr_db
        return raw


# fp32: reordering only (measured ~1e-6); fp16 activations carry ~3 decimal digits (each segment starts from
# PyTorch's fp32 scan output, so errors do not compound across mixers)
_INPUT_REL_TOL = {"fp32": 1e-4, "fp16": 3e-2}


def plugin_parity(model: MambaSR, path: Path, lr: np.ndarray, precision: str, *, fp32_max_abs: float, fp16_min_psnr_db: float) -> PluginParity:
    """Run the plugin graph at `path` in ONNX Runtime with its custom nodes cut out (each node's output a graph input
    fed with PyTorch's scan output, its inputs graph outputs) on the tile `lr`, against the fp32 PyTorch model."""
    import onnx

    from .parity import compare, ort_session

    proto = onnx.load(str(path))
    nodes = plugin_nodes(proto)
    records: list[dict[str, torch.Tensor]] = []

    def recording_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        with substituted(None):
            y = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, impl="chunked")
        given = dict(zip(_INPUT_ORDER, (u, delta, A, B, C, D, z, delta_bias), strict=True))
        records.append({**{k: v for k, v in given.items() if v is not None}, "y": y})
        return y

    with torch.no_grad(), substituted(recording_scan):
        reference = model.eval()(torch.from_numpy(lr), scan_impl="chunked").numpy()
    if len(records) != len(nodes):
        return PluginParity(path.name, precision, tuple(lr.shape), len(nodes), "", math.inf, math.inf, -math.inf, False,
                            f"{len(nodes)} custom nodes, PyTorch ran {len(records)} scans")  # fmt: skip
    cut, feeds, wanted = _cut_graph(proto, nodes, records)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cut.onnx").write_bytes(cut.SerializeToString())
        session = ort_session(Path(tmp) / "cut.onnx")
    outputs = dict(zip([o.name for o in cut.graph.output], session.run(None, {"lr": lr, **feeds}), strict=True))
    errors = {}
    for label, (name, expected) in wanted.items():
        got = outputs[name].astype(np.float64)
        scale = max(float(np.abs(expected).max()), 1e-12)
        err = float(np.abs(got - expected).max()) / scale if got.shape == expected.shape else math.inf
        errors[label] = math.inf if math.isnan(err) else err
    worst = max(errors, key=errors.__getitem__) if errors else ""
    worst_err = errors.get(worst, 0.0)
    max_abs, psnr_db, finite = compare(outputs[proto.graph.output[0].name], reference)
    reasons = []
    if not worst_err <= _INPUT_REL_TOL[precision]:
        reasons.append(f"custom-node input {worst} differs from PyTorch's by {worst_err:.3g} (relative)")
    if not finite:
        reasons.append("non-finite output")
    elif precision == "fp32" and max_abs > fp32_max_abs:
        reasons.append(f"output max abs error {max_abs:.3g} > {fp32_max_abs:g}")
    elif precision == "fp16" and psnr_db < fp16_min_psnr_db:
        reasons.append(f"output PSNR {psnr_db:.1f} dB < {fp16_min_psnr_db:g} dB")
    result = PluginParity(path.name, precision, tuple(lr.shape), len(nodes), worst, worst_err, max_abs, psnr_db, not reasons, "; ".join(reasons))
    log.info("plugin parity %s: inputs rel err %.3g (%s), output max abs %.3g", path.name, worst_err, worst, max_abs)
    return result


def _cut_graph(proto, nodes, records):
    """A copy of `proto` without its custom nodes: each node's output becomes a graph input (fed with PyTorch's y in
    the node's layout and dtype), each node's activation inputs become graph outputs. Returns (graph, feeds,
    {label: (output name, PyTorch's value in the node's layout, float64)})."""
    import onnx

    cut = copy.deepcopy(proto)
    graph = cut.graph
    types = _value_types(cut)
    feeds, wanted = {}, {}
    cut_names = {node.output[0] for node in nodes}
    kept = [n for n in graph.node if n.op_type != PLUGIN_NAME]
    del graph.node[:]
    graph.node.extend(kept)
    for i, (node, record) in enumerate(zip(nodes, records, strict=True)):
        major = dict(zip(TOKEN_MAJOR_ORDER, _attr(node, "token_major"), strict=True))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(types.get(node.input[0], onnx.TensorProto.FLOAT))
        y = _layout(record["y"], major["y"]).astype(dtype)
        feeds[node.output[0]] = y
        graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], types.get(node.input[0], 1), list(y.shape)))
        for name, tensor in input_names(node).items():
            if name not in _LAYOUT_INPUTS or tensor in cut_names:
                continue  # A, D, delta_bias: initializers, compared with the model's parameters by the fp32 output
            graph.output.append(onnx.helper.make_tensor_value_info(tensor, types.get(tensor, 1), None))
            wanted[f"node {i} {name}"] = (tensor, _layout(record[name], major[name]).astype(np.float64))
    value_names = {vi.name for vi in graph.output} | {vi.name for vi in graph.input}
    kept_info = [vi for vi in graph.value_info if vi.name not in value_names]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    unique, seen = [], set()
    for out in graph.output:  # a tensor asked for twice (one producer feeding two nodes) is one graph output
        if out.name not in seen:
            seen.add(out.name)
            unique.append(out)
    del graph.output[:]
    graph.output.extend(unique)
    del cut.opset_import[:]
    cut.opset_import.extend(o for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return cut, feeds, wanted


def _value_types(proto) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info) + list(g.output)}
    types.update({init.name: init.data_type for init in g.initializer})
    return types


def _layout(tensor: torch.Tensor, token_major: int) -> np.ndarray:
    """A (batch, K, L) scan tensor as the node sees it: (batch, L, K) when token-major."""
    array = tensor.detach().float()
    return (array.transpose(1, 2) if token_major else array).contiguous().numpy()
