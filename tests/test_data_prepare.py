"""`data prepare`: downloads from a local HTTP server on 127.0.0.1 serving small generated archives (never a real host)."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambaesr_edge import data_prepare as dp
from mambaesr_edge.cli import main
from mambaesr_edge.datasets import find_images
from mambaesr_edge.errors import DatasetError


def _png(seed: int, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _benchmark_files(sets: dict[str, int], top: str = "benchmark") -> dict[str, bytes]:
    """EDSR's benchmark.tar layout: SET/HR/x.png, SET/LR_bicubic/X4/xx4.png (+ X2, which must not be taken)."""
    files = {}
    for name, count in sets.items():
        for i in range(count):
            files[f"{top}/{name}/HR/img{i:03d}.png"] = _png(i, 8)
            files[f"{top}/{name}/LR_bicubic/X4/img{i:03d}x4.png"] = _png(100 + i, 2)
            files[f"{top}/{name}/LR_bicubic/X2/img{i:03d}x2.png"] = _png(200 + i, 4)
    return files


def _tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        if self.path.endswith("/short/benchmark.tar"):  # claims more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            return
        super().do_GET()


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(folder served, base URL) of an HTTP server on 127.0.0.1 (ephemeral port), in a thread."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _leftovers(root: Path) -> list[str]:
    """Temporary or half-done entries in ROOT (all hidden: .NAME.partial-*, .downloads, ...)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


def test_download_unpacks_benchmark_sets_into_our_layout(server, tmp_path):
    served, url = server
    _tar(served / "benchmark.tar", _benchmark_files({"Set5": 5, "Set14": 14}))
    root = tmp_path / "data"
    results = dp.prepare_datasets(["set5", "Set14"], root, base_url=url)
    assert [(r.name, r.hr_images, r.lr_images, r.status) for r in results] == [
        ("Set5", 5, 5, "prepared"), ("Set14", 14, 14, "prepared")]
    entries = find_images(root / "Set5", 4)  # what eval reads
    assert len(entries) == 5 and all(lr is not None and lr.name == f"{stem}x4.png" for stem, _, lr in entries)
    assert sorted(p.name for p in (root / "Set5").iterdir()) == ["HR", "LR_bicubic"]
    assert [p.name for p in (root / "Set5" / "LR_bicubic").iterdir()] == ["X4"]  # X2 not taken
    assert (root / "Set14" / "HR" / "img013.png").read_bytes() == _png(13, 8)
    assert _leftovers(root) == []  # downloads removed, no partial folders
    # a second run finds the sets in place and downloads nothing
    (served / "benchmark.tar").unlink()
    assert [r.status for r in dp.prepare_datasets(["Set5"], root, base_url=url)] == ["already there"]
    # the CLI, keeping the archive
    assert main(["data", "prepare", "Set5", "--root", str(tmp_path / "cli"), "--base-url", url, "--force"]) == 2  # gone: 404
    _tar(served / "benchmark.tar", _benchmark_files({"Set5": 5}))
    assert main(["data", "prepare", "Set5", "--root", str(tmp_path / "cli"), "--base-url", url, "--keep-archives"]) == 0
    assert (tmp_path / "cli" / ".downloads" / "benchmark.tar").is_file()
    assert len(list((tmp_path / "cli" / "Set5" / "HR").iterdir())) == 5


def test_div2k_zip_pair(server, tmp_path):
    """DIV2K comes as an HR zip and an LR zip; a small catalog of the same shape (3 images instead of 100)."""
    served, url = server
    _zip(served / "DIV2K_valid_HR.zip", {f"DIV2K_valid_HR/{801 + i:04d}.png": _png(i, 8) for i in range(3)})
    _zip(served / "DIV2K_valid_LR_bicubic_X4.zip",
         {f"DIV2K_valid_LR_bicubic/X4/{801 + i:04d}x4.png": _png(9 + i, 2) for i in range(3)})
    catalog = {"DIV2K_valid": dp._div2k("valid", 3)}
    results = dp.prepare_datasets(["DIV2K_valid"], tmp_path / "data", base_url=url, catalog=catalog)
    assert (results[0].hr_images, results[0].lr_images) == (3, 3)
    assert len(find_images(tmp_path / "data" / "DIV2K_valid", 4)) == 3
    assert _leftovers(tmp_path / "data") == []


def test_http_404_is_a_clear_error(server, tmp_path, capsys):
    _, url = server
    with pytest.raises(DatasetError, match="HTTP 404") as info:
        dp.prepare_datasets(["Set5"], tmp_path / "data", base_url=url)
    assert "--from" in info.value.hint and "benchmark.tar" in info.value.message
    assert _leftovers(tmp_path / "data") == [] and not (tmp_path / "data" / "Set5").exists()
    assert main(["data", "prepare", "Set5", "--root", str(tmp_path / "data"), "--base-url", url]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_truncated_download_is_refused(server, tmp_path):
    _, url = server
    with pytest.raises(DatasetError, match="ended after 1,000 of 100,000 bytes"):
        dp.prepare_datasets(["Set5"], tmp_path / "data", base_url=url + "/short")
    assert _leftovers(tmp_path / "data") == []


def test_wrong_image_count_leaves_nothing_behind(server, tmp_path):
    served, url = server
    _tar(served / "benchmark.tar", _benchmark_files({"Set5": 4}))
    with pytest.raises(DatasetError, match="holds 4 images, Set5 has 5"):
        dp.prepare_datasets(["Set5"], tmp_path / "data", base_url=url)
    assert not (tmp_path / "data" / "Set5").exists() and _leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("kind", ["zip-crc", "tar-truncated", "tar-gz-truncated", "not-an-archive"])
def test_corrupt_archives_are_refused(server, tmp_path, kind):
    served, url = server
    files = _benchmark_files({"Set5": 5})
    if kind == "zip-crc":  # a stored (uncompressed) member with one byte flipped: its CRC no longer matches
        raw = bytearray(_zip(tmp_path / "b.zip", files).read_bytes())
        at = raw.find(files["benchmark/Set5/HR/img002.png"][20:40])
        raw[at] ^= 0xFF
        served.joinpath("benchmark.tar").write_bytes(bytes(raw))  # the name says .tar, the content decides
    elif kind.startswith("tar"):
        mode = "w:gz" if "gz" in kind else "w"
        raw = _tar(tmp_path / "b.tar", files, mode).read_bytes()
        served.joinpath("benchmark.tar").write_bytes(raw[: len(raw) * 2 // 3])
    else:
        served.joinpath("benchmark.tar").write_bytes(b"<html>not found</html>" * 50)
    with pytest.raises(DatasetError, match="corrupt or unreadable archive") as info:
        dp.prepare_datasets(["Set5"], tmp_path / "data", base_url=url)
    assert "download it again" in info.value.hint
    assert not (tmp_path / "data" / "Set5").exists() and _leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("kind", ["tar-dotdot", "tar-absolute", "tar-symlink-out", "tar-hardlink-out", "zip-dotdot"])
def test_path_traversal_is_refused(server, tmp_path, kind):
    served, url = server
    files = _benchmark_files({"Set5": 5})
    if kind == "zip-dotdot":
        _zip(served / "benchmark.tar", {**files, "benchmark/Set5/HR/../../../../evil.png": _png(0, 8)})
    else:
        with tarfile.open(served / "benchmark.tar", "w") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            evil = tarfile.TarInfo({"tar-dotdot": "benchmark/../../evil.png", "tar-absolute": "/tmp/evil.png"}.get(kind, "benchmark/Set5/HR/zz.png"))
            if kind == "tar-symlink-out":
                evil.type, evil.linkname = tarfile.SYMTYPE, "../../../../../etc/passwd"
            elif kind == "tar-hardlink-out":
                evil.type, evil.linkname = tarfile.LNKTYPE, "../outside.png"
            if evil.type == tarfile.REGTYPE:
                evil.size = 8
                tf.addfile(evil, io.BytesIO(b"\x89PNG\r\n\x1a\n"))
            else:
                tf.addfile(evil)
    with pytest.raises(DatasetError, match="unsafe (member|link)") as info:
        dp.prepare_datasets(["Set5"], tmp_path / "data", base_url=url)
    assert "malicious" in info.value.hint
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "data" / "Set5").exists()
    assert _leftovers(tmp_path / "data") == []


def test_links_inside_an_archive_are_read_as_copies(server, tmp_path):
    served, url = server
    files = _benchmark_files({"Set5": 5})
    del files["benchmark/Set5/HR/img004.png"]
    with tarfile.open(served / "benchmark.tar", "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("benchmark/Set5/HR/img004.png")
        link.type, link.linkname = tarfile.SYMTYPE, "img000.png"
        tf.addfile(link)
    dp.prepare_datasets(["Set5"], tmp_path / "data", base_url=url)
    hr = tmp_path / "data" / "Set5" / "HR"
    assert not (hr / "img004.png").is_symlink() and (hr / "img004.png").read_bytes() == (hr / "img000.png").read_bytes()


def test_from_local_folder_and_archive(tmp_path):
    tree = tmp_path / "mine"
    for name, data in _benchmark_files({"Set5": 5, "B100": 100}, top="mine").items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # a folder holding the sets (EDSR's B100 becomes BSD100)
    results = dp.prepare_datasets(["Set5", "B100"], tmp_path / "a", source=tree)
    assert [(r.name, r.hr_images, r.lr_images) for r in results] == [("Set5", 5, 5), ("BSD100", 100, 100)]
    # the set's own folder, and an archive file
    assert dp.prepare_datasets(["Set5"], tmp_path / "b", source=tree / "Set5")[0].hr_images == 5
    archive = _tar(tmp_path / "sets.tar.gz", _benchmark_files({"Set5": 5}), "w:gz")
    assert dp.prepare_datasets(["Set5"], tmp_path / "c", source=archive)[0].lr_images == 5
    # a folder of the catalog's archives (a mirror on disk)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive.rename(mirror / "benchmark.tar")
    assert main(["data", "prepare", "Set5", "--root", str(tmp_path / "d"), "--from", str(mirror)]) == 0
    assert (mirror / "benchmark.tar").is_file()  # the user's own archive is never deleted
    # a set of your own: a flat folder of images, HR only (eval makes the LR)
    flat = tmp_path / "photos"
    flat.mkdir()
    for i in range(3):
        (flat / f"p{i}.png").write_bytes(_png(i, 8))
    mine = dp.prepare_datasets(["MySet"], tmp_path / "e", source=flat)[0]
    assert (mine.hr_images, mine.lr_images) == (3, 0) and len(find_images(tmp_path / "e" / "MySet", 4)) == 3
    # a --from folder missing images of a catalog set
    (tree / "Set5" / "HR" / "img000.png").unlink()
    with pytest.raises(DatasetError, match="holds 4 images"):
        dp.prepare_datasets(["Set5"], tmp_path / "f", source=tree)


def test_existing_set_is_checked_and_replaced_only_with_force(tmp_path):
    src = tmp_path / "src"
    for name, data in _benchmark_files({"Set5": 5}, top="src").items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    root = tmp_path / "data"
    dp.prepare_datasets(["Set5"], root, source=src)
    (root / "Set5" / "HR" / "img000.png").unlink()
    with pytest.raises(DatasetError, match="exists but does not check out") as info:
        dp.prepare_datasets(["Set5"], root, source=src)
    assert "--force" in info.value.hint
    assert dp.prepare_datasets(["Set5"], root, source=src, force=True)[0].status == "replaced"
    assert len(list((root / "Set5" / "HR").iterdir())) == 5 and _leftovers(root) == []


def test_catalog_is_frozen_and_complete():
    with pytest.raises(TypeError):
        dp.DATASETS["Set5"] = None  # type: ignore[index]
    counts = {name: tuple(p.count for p in spec.parts) for name, spec in dp.DATASETS.items()}
    assert counts == {"DIV2K_train": (800, 800), "DIV2K_valid": (100, 100), "Set5": (5, 5), "Set14": (14, 14),
                      "BSD100": (100, 100), "Urban100": (100, 100)}
    for spec in dp.DATASETS.values():
        assert {p.dest for p in spec.parts} == {"HR", "LR_bicubic/X4"}
        for part in spec.parts:
            archive = dp.ARCHIVES[part.archive]
            assert archive.url.startswith("https://") and archive.url.endswith("/" + archive.file)
    assert [s.name for s in dp.resolve_names(["div2k", "B100"])] == ["DIV2K_train", "DIV2K_valid", "BSD100"]
    assert [s.name for s in dp.resolve_names([])] == list(dp.DEFAULT_SETS)
    with pytest.raises(DatasetError, match="unknown dataset 'Set6'") as info:
        dp.resolve_names(["Set6"])
    assert "--from" in info.value.hint
    with pytest.raises(DatasetError, match="not a usable dataset name"):
        dp.resolve_names(["../x"], allow_custom=True)
