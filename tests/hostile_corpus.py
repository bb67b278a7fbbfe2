"""Generators of hostile or broken inputs (issue 8), written at test time into a folder: nothing binary is committed.

Each ``make_*(folder) -> Path`` writes one file (or folder) and returns its path. Images are 12 high x 10 wide
unless said otherwise, so a x4 model gives 40 x 48. Bytes are built with Pillow, numpy, zlib, struct, json and
OpenCV; the checkpoints that carry code are pickled here (pickling runs nothing) and never unpickled.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

H, W = 12, 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, with a 10-byte image stream (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + png_chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- images: broken


def make_png_bomb(folder: Path) -> Path:
    return write(folder / "bomb.png", png_claiming(30000, 30000))  # 900 Mpx: above twice Pillow's limit


def make_png_bomb_warning_zone(folder: Path) -> Path:
    return write(folder / "bomb-100mpx.png", png_claiming(10000, 10000))  # between Pillow's limit and twice it


def make_bmp_bomb(folder: Path) -> Path:
    file_header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info_header = struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return write(folder / "bomb.bmp", file_header + info_header)


def make_png_zero_size(folder: Path) -> Path:
    return write(folder / "zero-size.png", png_claiming(0, 0))


def make_truncated(fmt: str, suffix: str):
    def make(folder: Path) -> Path:
        data = encode(Image.fromarray(rgb()), fmt)
        return write(folder / f"truncated{suffix}", data[: len(data) // 2])

    return make


def make_png_bad_crc(folder: Path) -> Path:
    data = bytearray(encode(Image.fromarray(rgb()), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR chunk's CRC
    return write(folder / "bad-crc.png", bytes(data))


def make_png_garbage_stream(folder: Path) -> Path:
    ihdr = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
    idat = bytes(range(256)) * 2  # not a zlib stream
    return write(folder / "garbage-stream.png", PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def make_empty_png(folder: Path) -> Path:
    return write(folder / "empty.png", b"")


def make_text_png(folder: Path) -> Path:
    return write(folder / "notes.png", b"this is a text file, not an image\n")


def make_folder_png(folder: Path) -> Path:
    path = folder / "folder.png"
    path.mkdir()
    return path


def make_float_tiff(folder: Path) -> Path:
    path = folder / "float32.tif"
    Image.fromarray(np.random.default_rng(1).random((H, W)).astype(np.float32)).save(path)
    return path


# ----------------------------------------------------------------------------- images: valid but unusual


def make_png(folder: Path, name: str = "in.png", h: int = H, w: int = W) -> Path:
    path = folder / name
    Image.fromarray(rgb(h, w)).save(path)
    return path


def make_one_pixel_png(folder: Path) -> Path:
    return make_png(folder, "one-pixel.png", 1, 1)


def make_jpeg_named_png(folder: Path) -> Path:
    return write(folder / "really-a-jpeg.png", encode(Image.fromarray(rgb()), "JPEG"))


def make_cmyk_jpeg(folder: Path) -> Path:
    return write(folder / "cmyk.jpg", encode(Image.fromarray(rgb()).convert("CMYK"), "JPEG"))


def make_palette_png(folder: Path) -> Path:
    """A palette PNG whose colour 0 is transparent (a tRNS chunk)."""
    return write(folder / "palette.png", encode(Image.fromarray(rgb()).convert("P"), "PNG", transparency=0))


def make_la_png(folder: Path) -> Path:
    data = np.random.default_rng(2).integers(0, 256, (H, W, 2)).astype(np.uint8)
    return write(folder / "gray-alpha.png", encode(Image.fromarray(data, "LA"), "PNG"))


def make_rgba_png(folder: Path) -> Path:
    data = np.random.default_rng(3).integers(0, 256, (H, W, 4)).astype(np.uint8)
    return write(folder / "rgba.png", encode(Image.fromarray(data, "RGBA"), "PNG"))


def make_gray16_png(folder: Path) -> Path:
    data = np.random.default_rng(4).integers(0, 65536, (H, W)).astype(np.uint16)
    return write(folder / "gray16.png", encode(Image.fromarray(data), "PNG"))


def make_rgb16_png(folder: Path) -> Path:
    """16-bit RGB PNG (colour type 2, bit depth 16), raw rows, filter 0: Pillow cannot write these."""
    data = np.random.default_rng(5).integers(0, 65536, (H, W, 3)).astype(">u2")
    rows = data.view(np.uint8).reshape(H, W * 6)
    raw = np.concatenate([np.zeros((H, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", W, H, 16, 2, 0, 0, 0)
    return write(folder / "rgb16.png", PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def make_gray16_tiff(folder: Path) -> Path:
    path = folder / "gray16.tif"
    Image.fromarray(np.random.default_rng(6).integers(0, 65536, (H, W)).astype(np.uint16)).save(path)
    return path


def make_exif_rotated_jpeg(folder: Path) -> Path:
    """Stored 10 wide x 4 high with EXIF orientation 6: displayed (and upscaled) 4 wide x 10 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return write(folder / "exif-rotated.jpg", encode(Image.fromarray(rgb(4, 10)), "JPEG", exif=exif))


def make_dataset(folder: Path) -> Path:
    """A benchmark folder NAME/HR/ with one 48 x 40 image (what `eval` takes)."""
    root = folder / "Tiny"
    (root / "HR").mkdir(parents=True)
    Image.fromarray(rgb(48, 40)).save(root / "HR" / "a.png")
    return root


# ----------------------------------------------------------------------------- checkpoints


def make_pickle_exec(folder: Path) -> Path:
    """Protocol-4 pickle (STACK_GLOBAL) of a dict holding a call of builtins.exec: pickling it runs nothing."""

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('the checkpoint ran code')",))

    return write(folder / "exec.pth", pickle.dumps({"conv_first.weight": Payload()}, protocol=4))


def make_pickle_os_system(folder: Path) -> Path:
    """Protocol-2 pickle: GLOBAL posix.system (what pickling os.system writes on Linux), wrapped in a dict."""
    return write(folder / "system.pth", b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01cposix\nsystem\nq\x02X\x04\x00\x00\x00trueq\x03\x85q\x04Rq\x05s.")


def make_torch_zip_with_code(folder: Path) -> Path:
    """A torch.save zip checkpoint whose data.pkl calls builtins.print on load (harmless if it ever ran)."""

    class Payload:
        def __reduce__(self):
            return (print, ("the checkpoint ran code",))

    path = folder / "zip-with-code.pth"
    torch.save({"conv_first.weight": Payload()}, path)
    return path


def _safetensors_parts(weights: Path) -> tuple[dict, bytes]:
    raw = weights.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def _safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def edited_weights(weights: Path, name: str, edit) -> Path:
    """A copy of ``weights`` (our safetensors) with ``edit(state_dict) -> state_dict`` applied, config kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    path = weights.parent / name
    save_file(edit(tensors), str(path), metadata=metadata)
    return path


def replace_tensor(key: str, value_of):
    def edit(tensors: dict) -> dict:
        return {**tensors, key: value_of(tensors[key])}

    return edit


def safetensors_truncated_header(weights: Path, folder: Path) -> Path:
    return write(folder / "truncated-header.safetensors", weights.read_bytes()[:20])


def safetensors_bad_json(weights: Path, folder: Path) -> Path:
    raw = weights.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + size].replace(b"{", b"[", 1)  # same length, no longer a JSON object
    return write(folder / "bad-json.safetensors", raw[:8] + header + raw[8 + size :])


def safetensors_huge_header(folder: Path) -> Path:
    return write(folder / "huge-header.safetensors", struct.pack("<Q", 1 << 60) + b"{}")


def safetensors_bad_config(weights: Path, folder: Path) -> Path:
    header, body = _safetensors_parts(weights)
    header["__metadata__"]["mambaesr_edge.config"] = json.dumps({"scale": 7, "embed_dim": 8})
    return write(folder / "bad-config.safetensors", _safetensors(header, body))


# ----------------------------------------------------------------------------- ONNX, bundles, engines


def tiny_onnx_model():
    """lr (1,3,8,8) * w -> sr: a one-node graph (the shape of the file matters here, not the maths)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["lr", "w"], ["sr"])],
        "tiny",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, [1, 3, 8, 8])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_onnx_missing_external_data(folder: Path) -> Path:
    import onnx

    path = folder / "external.onnx"
    onnx.save_model(tiny_onnx_model(), str(path), save_as_external_data=True, location="external.onnx.data", size_threshold=0)
    (folder / "external.onnx.data").unlink()
    return path


def make_onnx_garbage(folder: Path) -> Path:
    return write(folder / "garbage.onnx", bytes(range(256)) * 4)


def make_bundle_with_stale_onnx(folder: Path) -> Path:
    """A bundle whose model.onnx is not the file bundle.json's sha256 names (replaced after export)."""
    from mambaesr_edge.presets import get_preset

    root = folder / "bundle"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"replaced after export")
    manifest = {
        "format": "mambaesr-edge-bundle/1", "config": json.loads(get_preset("test").to_json()), "scale": 4,
        "profile": "x86-cpu", "precision": "fp32", "tile": 16, "overlap": 4, "batch": 1, "dynamic_hw": False,
        "input_name": "lr", "output_name": "sr", "onnx": {"file": "model.onnx", "sha256": "0" * 64, "opset": 17},
        "onnx_fp16": None, "weights_sha256": "1" * 64,
    }  # fmt: skip
    (root / "bundle.json").write_text(json.dumps(manifest))
    return root


ENGINE_MANIFEST = {
    "format": "mambaesr-edge-engine/1", "tensorrt": "8.5.2", "gpu_name": "Xavier", "compute_capability": "7.2",
    "weights_sha256": "1" * 64, "onnx_sha256": "2" * 64, "profile": "xavier-nx", "precision": "fp16",
}  # fmt: skip


def make_engine_for_another_gpu(folder: Path) -> Path:
    """model.engine + a manifest saying it was built for a Xavier NX with TensorRT 8.5 (the test fakes an Orin)."""
    (folder / "model.engine.json").write_text(json.dumps(ENGINE_MANIFEST))
    return write(folder / "model.engine", b"serialized engine bytes")


def make_engine_with_unreadable_manifest(folder: Path) -> Path:
    (folder / "model.engine.json").write_text('{"tensorrt": "10.3.0", ')
    return write(folder / "model.engine", b"serialized engine bytes")


# ----------------------------------------------------------------------------- device profiles


def profile_file(folder: Path, name: str, **changes: object) -> Path:
    """The shipped x86-cpu profile with fields changed (a value of None removes the field) or added."""
    from mambaesr_edge.profiles import profiles_dir

    text = (profiles_dir() / "x86-cpu.toml").read_text()
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in changes:
            value = changes.pop(key)
            if value is None:
                continue
            line = f"{key} = {json.dumps(value)}"
        lines.append(line)
    lines += [f"{key} = {json.dumps(value)}" for key, value in changes.items()]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def make_profile_not_toml(folder: Path) -> Path:
    return write(folder / "broken.toml", b"name = 'x86-cpu\n[[[ tile = \x00")


# ----------------------------------------------------------------------------- video


def make_video(folder: Path, name: str = "clip.avi", frames: int = 8) -> Path:
    """An MJPG .avi of 32x24 noise frames (its container declares the frame count)."""
    import cv2

    path = folder / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    rng = np.random.default_rng(7)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (24, 32, 3)).astype(np.uint8))
    writer.release()
    return path


def make_video_broken_stream(folder: Path) -> Path:
    """The .avi cut at 60 %: OpenCV opens it, the header says 8 frames, only 3 decode."""
    good = make_video(folder, "whole.avi")
    data = good.read_bytes()
    good.unlink()
    return write(folder / "broken-stream.avi", data[: len(data) * 6 // 10])


def make_video_garbage(folder: Path) -> Path:
    return write(folder / "garbage.mp4", bytes(range(256)) * 20)
