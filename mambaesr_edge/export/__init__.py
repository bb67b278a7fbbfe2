"""Export: ONNX bundles with a parity report, TensorRT engines per device profile, and a graph cost model.

Modules: `onnx` (export + metadata), `parity` (ONNX Runtime vs PyTorch), `plugin_graph` (the graph whose scans are one
custom node each, and its check), `plugin_files` (the plugin's sources and build_plugin.sh in the bundle), `tensorrt`
(engine settings, build, trtexec line, the engine manifest it writes), `cost` (FLOPs/bytes/roofline from the ONNX
graph), `writer` (the whole export, atomic; `export_model`). The bundle format and the staleness rule live in
`mambaesr_edge.bundle`; the CLI in `mambaesr_edge.cli.export`. Heavy dependencies (onnx, onnxruntime, tensorrt) are
imported inside the functions that use them.
"""
