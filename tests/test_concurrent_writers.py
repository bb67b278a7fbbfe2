"""Issue 8, concurrent work: two `mambaesr-edge upscale` processes writing into the same output folder at once (the
same images, and images only one of them has), and threads writing one file name. (4 threads sharing one Upscaler:
tests/test_upscaler.py::test_four_threads_sharing_one_upscaler_match_serial_calls.)"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_processes import Cli, check_complete, temp_files, write_images
from PIL import Image

from mambaesr_edge.checkpoint import save_weights
from mambaesr_edge.fileio import atomic_write
from mambaesr_edge.images import load_image, save_image
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime import Upscaler


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("w") / "test.safetensors")


def test_two_processes_upscaling_into_one_folder(weights, tmp_path):
    pool = write_images(tmp_path / "pool", 18, size=24)
    both = [f"img{i:02d}.png" for i in range(10)]  # in both inputs, half of them in a subfolder
    inputs = {"a": tmp_path / "in_a", "b": tmp_path / "in_b"}
    only = {"a": ["img10.png", "img11.png", "img12.png", "img13.png"], "b": ["img14.png", "img15.png", "img16.png", "img17.png"]}
    for key, folder in inputs.items():
        for i, name in enumerate(both + only[key]):
            sub = folder / ("sub" if i % 2 else "") / name
            sub.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(pool / name, sub)
    out = tmp_path / "out"  # does not exist yet: both processes create it (and out/sub)
    args = ("-o", out, "-w", weights, "--tile", 0, "--scan", "chunked", "--overwrite")
    runs = [Cli("--threads", 1, "upscale", inputs[key], *args, cwd=tmp_path) for key in ("a", "b")]
    for run in runs:
        assert run.wait() == 0, run.stderr
        assert "Traceback" not in run.stderr
    assert not temp_files(out)
    written = check_complete(out)
    expected = {str(p.relative_to(inputs[k])) for k in inputs for p in inputs[k].rglob("*.png")}
    assert {str(p.relative_to(out)) for p in written} == expected  # 18 distinct outputs, complete

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the processes (--threads 1): the same kernels, bit for bit the same results
    try:
        up = Upscaler.from_path(weights, tile=0, scan_impl="chunked")
        for rel in sorted(expected):
            source = inputs["a"] / rel if (inputs["a"] / rel).exists() else inputs["b"] / rel
            np.testing.assert_array_equal(load_image(out / rel), up(load_image(source)), err_msg=rel)
    finally:
        torch.set_num_threads(threads)


def test_temporary_names_are_unique_per_writer(tmp_path):
    target = tmp_path / "x.png"
    with atomic_write(target) as first, atomic_write(target) as second:
        assert first != second and first.parent == target.parent
        for tmp in (first, second):  # hidden, recognisable, holding this process's id
            assert tmp.name.startswith(f".x.tmp-{os.getpid()}-") and tmp.suffix == ".png"
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert target.read_bytes() == b"1"  # the outer block finished last: its file won
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_threads_writing_one_image_name_leave_one_complete_image(tmp_path):
    target = tmp_path / "same.png"
    images = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(8)]
    errors: list[BaseException] = []

    def writer(image: np.ndarray) -> None:
        try:
            for _ in range(20):
                save_image(target, image)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(image,)) for image in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with Image.open(target) as im:
        result = np.asarray(im.convert("RGB"))
    assert any(np.array_equal(result, image) for image in images)  # one writer's whole image, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.png"]
