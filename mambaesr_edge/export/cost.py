"""Graph cost model: FLOPs and bytes from an exported ONNX graph (with inferred shapes), and a roofline time per device.

This is how scan designs are compared for Jetson without a Jetson. Counting rules (per node, from tensor shapes):
- Conv: 2 x output elements x (C_in / groups) x kH x kW; MatMul: 2 x output elements x K; Gemm: 2 x M x N x K;
  Einsum: 2 x the product of all index sizes when some index is summed, else the output elements.
- element-wise ops (Add, Mul, Exp, Sigmoid, ...): 1 FLOP per output element (transcendentals count 1);
  LayerNormalization 5 per element; reductions 1 per input element.
- data movement (Gather, Slice, Concat, Pad, Transpose, Cast, DepthToSpace, ...): 0 FLOPs.
- the scan plugin's custom node (MambaESRSelectiveScan, model_trt.onnx): batch x dim x L x (SCAN_FLOPS_PER_STATE x N
  + the per-token work its fields switch on: SCAN_FLOPS_PER_TOKEN), on the fp32 CUDA cores (the kernel computes in
  fp32); its bytes are its real input and output tensors like any node's: it writes y and nothing else (the state
  stays on chip), so the (L x dim x N) decays, drives and states of the pure-op scan are gone from the count.
Shapes hidden behind Shape arithmetic are computed from the known shapes (see _tensor_info). Bytes:
- `intermediate_bytes`: the size of every tensor a node writes, views (Reshape, Unsqueeze, Squeeze, Flatten,
  Identity) and shape arithmetic excluded: each is written once, so this is a lower bound on memory traffic for an
  engine that fuses nothing; `weight_bytes`: initializers; `io_bytes`: graph input + output.
- `traffic_bytes`: every non-view node's inputs read + outputs written (no reuse, no fusion: a pessimistic bound).
Modelled latency for a device profile = max(compute, memory) with
  compute = matmul-like FLOPs in fp16 / peak_tflops_fp16 + all other FLOPs / peak_tflops_fp32 (CUDA cores),
  memory  = (intermediate + weight + io bytes) / peak_bandwidth_gbs.
It ignores launch overheads and fusion, so it is a design tool (which scan materialises less), not a benchmark.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..native_build import PLUGIN_NAME, plugin_output_shape
from ..presets import ModelConfig
from ..profiles import DeviceProfile
from .onnx import require_onnx

log = logging.getLogger(__name__)

MATMUL_LIKE = frozenset({"Conv", "MatMul", "Gemm", "Einsum"})
ELEMENTWISE = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Sigmoid", "Tanh", "Relu", "Abs", "Neg", "Clip", "Max",
     "Min", "Sum", "Mean", "Erf", "Softplus", "Where", "Reciprocal", "Floor", "Ceil", "HardSigmoid", "LeakyRelu"}
)  # fmt: skip
REDUCTIONS = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "CumSum"})
VIEWS = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Shape", "Constant", "Size"})
LAYERNORM_FLOPS_PER_ELEMENT = 5
# the fused scan per state element: decay exp(delta*A) 2, drive (delta*u)*B 1, h = a*h + b 2, y += C*h 2
SCAN_FLOPS_PER_STATE = 7
# per channel and token: delta*u 1, plus what the node's fields switch on
SCAN_FLOPS_PER_TOKEN = {"base": 1, "has_delta_bias": 1, "delta_softplus": 4, "has_D": 2, "has_z": 3}
_INDEX_TYPES = frozenset({6, 7, 9})  # int32, int64, bool: shape arithmetic
_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


@dataclass(frozen=True)
class OpCost:
    op_type: str
    count: int
    flops: float
    bytes_written: float


@dataclass(frozen=True)
class GraphCost:
    input_shape: tuple[int, ...]
    node_count: int
    flops: float
    matmul_flops_fp16: float  # Conv/MatMul/Gemm/Einsum whose inputs are fp16 (tensor cores)
    matmul_flops_fp32: float
    other_flops: float
    intermediate_bytes: float
    weight_bytes: float
    io_bytes: float
    traffic_bytes: float
    largest_tensor: tuple[str, str, tuple[int, ...], float]  # (name, producing op, shape, bytes)
    by_op: tuple[OpCost, ...]
    unknown_shape_nodes: int  # nodes with an unsized float output (not counted); integer shape arithmetic is free

    def to_dict(self) -> dict[str, object]:
        name, op, shape, size = self.largest_tensor
        return {
            "input_shape": list(self.input_shape),
            "node_count": self.node_count,
            "gflops": self.flops / 1e9,
            "matmul_gflops_fp16": self.matmul_flops_fp16 / 1e9,
            "matmul_gflops_fp32": self.matmul_flops_fp32 / 1e9,
            "other_gflops": self.other_flops / 1e9,
            "intermediate_mb": self.intermediate_bytes / 1e6,
            "weight_mb": self.weight_bytes / 1e6,
            "io_mb": self.io_bytes / 1e6,
            "traffic_mb": self.traffic_bytes / 1e6,
            "largest_tensor": {"name": name, "op": op, "shape": list(shape), "mb": size / 1e6},
            "unknown_shape_nodes": self.unknown_shape_nodes,
            "by_op": [
                {"op": c.op_type, "count": c.count, "gflops": c.flops / 1e9, "mb_written": c.bytes_written / 1e6} for c in self.by_op
            ],
        }


@dataclass(frozen=True)
class RooflineEstimate:
    profile: str
    compute_ms: float
    memory_ms: float
    latency_ms: float  # per batch
    per_tile_ms: float
    bound: str  # "memory" or "compute"

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _shape_of(value_info) -> tuple[int, ...] | None:
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(d.dim_value)
    return tuple(dims)


def graph_cost(model: str | Path | object, input_shape: tuple[int, int, int, int] | None = None) -> GraphCost:
    """Count FLOPs and bytes of an ONNX graph (a path or a ModelProto). `input_shape` pins dynamic input dims.

    The graph is counted node by node as it is (a simplified graph has fewer no-op nodes, e.g. zero Pads)."""
    onnx = require_onnx()
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    if input_shape is not None:
        proto = _pin_input(proto, input_shape)
    info, types = _tensor_info(proto)
    graph = proto.graph
    weight_bytes = 0.0
    for init in graph.initializer:
        weight_bytes += math.prod(init.dims) * _DTYPE_BYTES.get(init.data_type, 4)

    def nbytes(name: str) -> float:
        if name not in info:
            return 0.0
        shape, dtype = info[name]
        return math.prod(shape) * _DTYPE_BYTES.get(dtype, 4)

    per_op: dict[str, list[float]] = {}
    mm16 = mm32 = other = inter = traffic = 0.0
    unknown: list[str] = []
    largest = ("", "", (), 0.0)
    for node in graph.node:
        if any(o and o not in info for o in node.output):
            if not all(types.get(o) in _INDEX_TYPES for o in node.output if o):
                unknown.append(node.op_type)  # an unsized float tensor: a real gap in the count
            continue  # else integer shape arithmetic: no cost
        flops = _node_flops(node, info)
        if node.op_type in MATMUL_LIKE:
            is_fp16 = info.get(node.input[0], ((), 1))[1] in (10, 16)
            mm16, mm32 = (mm16 + flops, mm32) if is_fp16 else (mm16, mm32 + flops)
        else:
            other += flops
        written = 0.0 if node.op_type in VIEWS else sum(nbytes(o) for o in node.output if o)
        if node.op_type not in VIEWS:
            traffic += written + sum(nbytes(i) for i in node.input if i)
            for out in node.output:
                if out and nbytes(out) > largest[3]:
                    largest = (out, node.op_type, info[out][0], nbytes(out))
        inter += written
        entry = per_op.setdefault(node.op_type, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += flops
        entry[2] += written
    io = sum(nbytes(v.name) for v in list(graph.input) + list(graph.output))
    by_op = tuple(sorted((OpCost(op, int(c), f, b) for op, (c, f, b) in per_op.items()), key=lambda c: (-c.flops, -c.bytes_written)))
    if unknown:
        log.warning("cost model: %d nodes (%s) have no inferred output shape and are not counted (the reasons: --debug)",
                    len(unknown), ", ".join(sorted(set(unknown))))
    shape_in = info.get(graph.input[0].name, ((), 1))[0]
    return GraphCost(
        input_shape=shape_in,
        node_count=len(graph.node),
        flops=mm16 + mm32 + other,
        matmul_flops_fp16=mm16,
        matmul_flops_fp32=mm32,
        other_flops=other,
        intermediate_bytes=inter,
        weight_bytes=weight_bytes,
        io_bytes=io,
        traffic_bytes=traffic,
        largest_tensor=largest,
        by_op=by_op,
        unknown_shape_nodes=len(unknown),
    )


def _tensor_info(proto) -> tuple[dict[str, tuple[tuple[int, ...], int]], dict[str, int]]:
    """(name -> (shape, ONNX elem type) for every tensor whose shape is known, name -> elem type for all).

    ONNX shape inference sizes most tensors; it cannot size the ones behind the Shape arithmetic the TorchScript
    exporter leaves (e.g. `chunk` becomes Slice with bounds computed from Shape -> Gather -> Add -> Div -> Mul: the
    inference's data propagation has no Div). `_complete_shapes` then walks the graph once more and computes that
    integer arithmetic from the now-known shapes, so every node is sized (fp16 graphs included)."""
    onnx = require_onnx()
    g = onnx.shape_inference.infer_shapes(proto, data_prop=True).graph
    shapes, types = {}, {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        types[vi.name] = vi.type.tensor_type.elem_type
        shape = _shape_of(vi)
        if shape is not None:
            shapes[vi.name] = shape
    for init in g.initializer:
        shapes[init.name], types[init.name] = tuple(init.dims), init.data_type
    if any(o and o not in shapes for node in proto.graph.node for o in node.output):
        _complete_shapes(proto, shapes, types)
    return {name: (shape, types.get(name, 1)) for name, shape in shapes.items()}, types


def _constant_tensor(node):
    """The value of a Constant node as a TensorProto (the `value` attribute; the scalar/list forms made into one)."""
    onnx = require_onnx()
    import numpy as np

    attr = node.attribute[0]
    if attr.name == "value":
        return attr.t
    data = {"value_float": attr.f, "value_floats": list(attr.floats), "value_int": attr.i, "value_ints": list(attr.ints)}.get(attr.name)
    if data is None:
        raise ValueError(f"Constant {node.name} with a {attr.name} attribute")
    dtype = np.float32 if attr.name.startswith("value_float") else np.int64
    return onnx.numpy_helper.from_array(np.asarray(data, dtype=dtype), node.output[0])


def _complete_shapes(proto, shapes: dict[str, tuple[int, ...]], types: dict[str, int]) -> None:
    """Size, in place, the tensors ONNX shape inference left unsized: one pass over the nodes (in graph order, which
    is topological) keeping the values of the integer tensors (shape arithmetic, small); a Shape node's value is its
    input's shape; an integer node whose inputs all have values is evaluated (onnx.reference); a node with an unsized
    output is inferred again by its own schema, with the known input values (e.g. a Slice's computed bounds)."""
    onnx = require_onnx()
    import numpy as np
    from onnx.reference import ReferenceEvaluator

    opsets = {o.domain: o.version for o in proto.opset_import}
    values: dict[str, np.ndarray] = {
        init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer if init.data_type in _INDEX_TYPES
    }
    for node in proto.graph.node:
        outputs = [o for o in node.output if o]
        if node.op_type == "Constant":
            value = onnx.numpy_helper.to_array(_constant_tensor(node))
            shapes.setdefault(outputs[0], tuple(value.shape))
            if value.dtype.kind in "iub":
                values[outputs[0]] = value
            continue
        if node.op_type == "Shape" and node.input[0] in shapes:
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            end = next((a.i for a in node.attribute if a.name == "end"), None)
            values[outputs[0]] = np.asarray(shapes[node.input[0]][start:end], dtype=np.int64)
        elif all(types.get(o) in _INDEX_TYPES for o in outputs) and all(i in values for i in node.input if i):
            try:
                results = ReferenceEvaluator(node, opsets=opsets).run(None, {i: values[i] for i in node.input if i})
            except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as exc:
                log.info("cost model: cannot evaluate %s %s (%s)", node.op_type, node.name, exc)
                continue
            values.update({o: np.asarray(r) for o, r in zip(node.output, results, strict=True) if o})
        for out in outputs:
            if out in values:
                shapes[out] = tuple(values[out].shape)
        if all(o in shapes for o in outputs) or not all(i in shapes for i in node.input if i):
            continue
        if node.op_type == PLUGIN_NAME:  # no ONNX schema: its output is u's shape in the layout its fields say
            major = next(list(a.ints) for a in node.attribute if a.name == "token_major")
            shapes[outputs[0]] = tuple(plugin_output_shape(shapes[node.input[0]], major))
            types.setdefault(outputs[0], types.get(node.input[0], 1))
            continue
        schema = onnx.defs.get_schema(node.op_type, opsets.get(node.domain, 1), node.domain)
        input_types = {i: onnx.helper.make_tensor_type_proto(types.get(i, 1), shapes[i]) for i in node.input if i}
        input_data = {i: onnx.numpy_helper.from_array(values[i], i) for i in node.input if i in values}
        try:
            inferred = onnx.shape_inference.infer_node_outputs(schema, node, input_types, input_data, opset_imports=list(proto.opset_import))
        except onnx.shape_inference.InferenceError as exc:
            log.info("cost model: cannot size %s %s (%s)", node.op_type, node.name, exc)
            continue
        for out, type_proto in inferred.items():
            tensor = type_proto.tensor_type
            if out not in shapes and tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
                shapes[out] = tuple(d.dim_value for d in tensor.shape.dim)
                types.setdefault(out, tensor.elem_type)
        if not all(o in shapes for o in outputs):
            log.info("cost model: cannot size %s %s (its output size depends on tensor values)", node.op_type, node.name)


def _pin_input(proto, shape: tuple[int, ...]):
    import copy

    pinned = copy.deepcopy(proto)
    dims = pinned.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    return pinned


def _node_flops(node, info: dict[str, tuple[tuple[int, ...], int]]) -> float:
    op = node.op_type
    out_shape = info[node.output[0]][0] if node.output and node.output[0] in info else ()
    out_elems = math.prod(out_shape) if out_shape else 0
    if op == "Conv":
        weight = info.get(node.input[1], ((),))[0]
        return 2.0 * out_elems * math.prod(weight[1:])
    if op == "MatMul":
        a = info.get(node.input[0], ((),))[0]
        return 2.0 * out_elems * (a[-1] if a else 0)
    if op == "Gemm":
        a = info.get(node.input[0], ((),))[0]
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        return 2.0 * out_elems * (a[0] if trans_a else a[-1])
    if op == "Einsum":
        return _einsum_flops(node, info, out_elems)
    if op == PLUGIN_NAME:
        return _scan_node_flops(node, info)
    if op in ELEMENTWISE:
        return float(out_elems)
    if op == "LayerNormalization":
        return float(LAYERNORM_FLOPS_PER_ELEMENT * out_elems)
    if op in REDUCTIONS:
        return float(math.prod(info.get(node.input[0], ((0,),))[0]))
    return 0.0


def _scan_node_flops(node, info) -> float:
    """FLOPs of one scan plugin node from its u (batch, dim, L or transposed: token_major) and A (dim, N) inputs."""
    fields = {a.name: (list(a.ints) if a.ints else a.i) for a in node.attribute}
    u_shape = info.get(node.input[0], ((),))[0]
    a_shape = info.get(node.input[2], ((),))[0]
    if len(u_shape) != 3 or len(a_shape) != 2:
        return 0.0
    per_token = SCAN_FLOPS_PER_TOKEN["base"] + sum(v for k, v in SCAN_FLOPS_PER_TOKEN.items() if k != "base" and fields.get(k))
    tokens_x_channels = math.prod(u_shape)  # batch x dim x L whichever the layout (token_major[u])
    return float(tokens_x_channels * (SCAN_FLOPS_PER_STATE * a_shape[1] + per_token))


def _einsum_flops(node, info, out_elems: int) -> float:
    equation = next(at.s.decode() for at in node.attribute if at.name == "equation").replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    sizes: dict[str, int] = {}
    for term, name in zip(lhs.split(","), node.input, strict=True):
        shape = info.get(name, ((),))[0]
        if "." in term or len(term) != len(shape):
            return 2.0 * out_elems  # ellipsis or unknown shape: a lower bound
        sizes.update(zip(term, shape, strict=True))
    summed = set(re.sub(r"[^a-zA-Z]", "", lhs)) - set(rhs)
    return 2.0 * math.prod(sizes.values()) if summed else float(out_elems)


def roofline(cost: GraphCost, profile: DeviceProfile) -> RooflineEstimate:
    """Modelled latency of one run of the graph (one batch) on the profile's device."""
    compute_s = cost.matmul_flops_fp16 / (profile.peak_tflops_fp16 * 1e12) + (cost.matmul_flops_fp32 + cost.other_flops) / (
        profile.peak_tflops_fp32 * 1e12
    )
    memory_s = (cost.intermediate_bytes + cost.weight_bytes + cost.io_bytes) / (profile.peak_bandwidth_gbs * 1e9)
    latency = max(compute_s, memory_s)
    batch = cost.input_shape[0] if cost.input_shape else 1
    return RooflineEstimate(
        profile=profile.name,
        compute_ms=compute_s * 1e3,
        memory_ms=memory_s * 1e3,
        latency_ms=latency * 1e3,
        per_tile_ms=latency * 1e3 / max(batch, 1),
        bound="memory" if memory_s >= compute_s else "compute",
    )


def analytic_macs_per_pixel(config: ModelConfig) -> dict[str, float]:
    """Multiply-accumulates per LR pixel, by part (the scan counts 3 per state element per token: decay x h + drive,
    the drive product, the C . h readout; its exp is not a MAC). `convs_and_linears` is what the graph's Conv and
    MatMul nodes should add up to (up to the causal conv's d_conv - 1 padded outputs per sequence)."""
    c, di, n, r, k = config.embed_dim, config.d_inner, config.d_state, config.dt_rank, len(config.scan_orders)
    ch, s, mixers = config.in_channels, config.scale, config.n_mixers
    parts = {
        "conv_first": ch * c * 9,
        "in_proj": mixers * c * 2 * di,
        "conv1d": mixers * k * di * config.d_conv,
        "x_proj": mixers * k * di * (r + 2 * n),
        "dt_proj": mixers * k * r * di,
        "out_proj": mixers * di * c,
        "group_convs": config.groups * c * c * 9,
        "conv_after_body": c * c * 9,
        "upsample": c * ch * s * s * 9,
        "scan": mixers * k * 3 * di * n,
    }
    parts["convs_and_linears"] = sum(v for key, v in parts.items() if key != "scan")
    parts["total"] = parts["convs_and_linears"] + parts["scan"]
    return {key: float(v) for key, v in parts.items()}
