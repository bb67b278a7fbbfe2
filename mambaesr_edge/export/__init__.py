"""Export: ONNX bundles with a parity report, TensorRT engines per device profile, and a graph cost model.

Modules: `onnx` (export + metadata), `parity` (ONNX Runtime vs PyTorch), `tensorrt` (engine build, trtexec line,
manifest, staleness), `cost` (FLOPs/bytes/roofline from the ONNX graph), `bundle` (the whole export, atomic),
`commands` (the CLI). Heavy dependencies (onnx, onnxruntime, tensorrt) are imported inside the functions that use them.
"""
