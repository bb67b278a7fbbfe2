"""`mambaesr-edge data prepare`: download (or take from a local folder/archive), check and unpack the usual SR sets.

Every set ends up in the benchmark layout that `datasets.py` reads::

    ROOT/NAME/HR/<stem>.png
    ROOT/NAME/LR_bicubic/X4/<stem>x4.png      (when the source has it)

Steps for each archive: a streamed download into a temporary file, renamed when complete (the byte count must match
Content-Length, and the sha256 where the catalog has one); an integrity check (``zipfile.testzip`` / reading every
tar member) that also refuses members escaping the archive (absolute paths, ``..``, links pointing outside); then
each set is unpacked into ``ROOT/.NAME.partial-*`` and renamed to ``ROOT/NAME`` only once its image counts are right,
so a failed run never leaves a half-unpacked set behind.

The catalog below is frozen. Checksums: no sha256 is listed because none could be checked here against the real
files (this machine has no internet); the download is checked by its size (Content-Length), the archive's own
integrity data (zip CRCs, gzip CRC), and the image counts, which are the published ones.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import secrets
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .archive_sources import Source, corrupt_archive, match_images, open_source
from .datasets import IMAGE_SUFFIXES, find_images
from .errors import DatasetError

__all__ = [
    "ARCHIVES", "DATASETS", "DEFAULT_SETS", "Archive", "DatasetSpec", "Part", "PreparedDataset",
    "download", "prepare_datasets", "resolve_names", "verify_dataset",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class Archive:
    """One downloadable archive. `file` is also its name under --base-url and in a --from folder."""

    file: str
    url: str
    sha256: str | None = None  # checked when given


@dataclass(frozen=True)
class Part:
    """Images of one set taken from one folder of an archive.

    `src` is matched against the tail of each member's folder, case-insensitively ("B100/HR" matches
    "benchmark/B100/HR/x.png"); "" means the top folder of the source. `dest` is the folder under ROOT/NAME.
    """

    archive: str
    src: str
    dest: str
    count: int | None  # expected number of images; None: any number >= 1
    lr: bool = False  # an LR part: may be absent from a --from source (eval then makes LR by MATLAB bicubic)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    parts: tuple[Part, ...]
    description: str
    licence: str


_DIV2K = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
_RESEARCH = "research / non-commercial use only (see the authors' site)"

ARCHIVES: Mapping[str, Archive] = MappingProxyType({
    "DIV2K_train_HR": Archive("DIV2K_train_HR.zip", _DIV2K + "DIV2K_train_HR.zip"),
    "DIV2K_valid_HR": Archive("DIV2K_valid_HR.zip", _DIV2K + "DIV2K_valid_HR.zip"),
    "DIV2K_train_LR_bicubic_X4": Archive("DIV2K_train_LR_bicubic_X4.zip", _DIV2K + "DIV2K_train_LR_bicubic_X4.zip"),
    "DIV2K_valid_LR_bicubic_X4": Archive("DIV2K_valid_LR_bicubic_X4.zip", _DIV2K + "DIV2K_valid_LR_bicubic_X4.zip"),
    # EDSR's benchmark bundle (Set5, Set14, B100, Urban100 with HR + LR_bicubic/X2,X3,X4), ~250 MB
    "benchmark": Archive("benchmark.tar", "https://cv.snu.ac.kr/research/EDSR/benchmark.tar"),
})


def _benchmark(name: str, folder: str, count: int, description: str) -> DatasetSpec:
    return DatasetSpec(name, (
        Part("benchmark", "|".join(f"{f}/HR" for f in dict.fromkeys((folder, name))), "HR", count),
        Part("benchmark", "|".join(f"{f}/LR_bicubic/X4" for f in dict.fromkeys((folder, name))), "LR_bicubic/X4", count, lr=True),
    ), description, _RESEARCH)


def _div2k(split: str, count: int) -> DatasetSpec:
    return DatasetSpec(f"DIV2K_{split}", (
        Part(f"DIV2K_{split}_HR", f"DIV2K_{split}_HR", "HR", count),
        Part(f"DIV2K_{split}_LR_bicubic_X4", f"DIV2K_{split}_LR_bicubic/X4", "LR_bicubic/X4", count, lr=True),
    ), f"DIV2K {split} split, 2K-resolution photos (NTIRE 2017)", "academic research use only (DIV2K terms)")


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({
    "DIV2K_train": _div2k("train", 800),
    "DIV2K_valid": _div2k("valid", 100),
    "Set5": _benchmark("Set5", "Set5", 5, "Set5 (Bevilacqua et al. 2012)"),
    "Set14": _benchmark("Set14", "Set14", 14, "Set14 (Zeyde et al. 2010)"),
    "BSD100": _benchmark("BSD100", "B100", 100, "BSD100: the BSDS300 test images (Martin et al. 2001)"),
    "Urban100": _benchmark("Urban100", "Urban100", 100, "Urban100 (Huang et al. 2015)"),
})
DEFAULT_SETS = ("Set5", "Set14", "BSD100", "Urban100")  # what `data prepare` takes without names (one ~250 MB tar)
_ALIASES = {"b100": ("BSD100",), "div2k": ("DIV2K_train", "DIV2K_valid"), "benchmark": DEFAULT_SETS}

# ---------------------------------------------------------------------------------------------------------- names


def resolve_names(names: list[str] | tuple[str, ...], *, allow_custom: bool = False,
                  catalog: Mapping[str, DatasetSpec] = DATASETS) -> list[DatasetSpec]:
    """Catalog names (case-insensitive; aliases B100, DIV2K, benchmark) -> specs; with --from also any other name."""
    by_lower = {k.lower(): k for k in catalog}
    out: list[DatasetSpec] = []
    for raw in names or DEFAULT_SETS:
        keys = _ALIASES.get(raw.lower()) if raw.lower() not in by_lower else (by_lower[raw.lower()],)
        if keys:
            out.extend(catalog[k] for k in keys if k in catalog)
        elif allow_custom:
            _check_plain_name(raw)
            out.append(DatasetSpec(raw, (Part("", "HR", "HR", None), Part("", "LR_bicubic/X4", "LR_bicubic/X4", None, lr=True)),
                                   f"local set {raw}", "as the source's"))
        else:
            raise DatasetError(f"unknown dataset {raw!r}",
                               hint=f"known: {', '.join(catalog)}; prepare your own folder with --from DIR")
    unique = {spec.name: spec for spec in out}
    return list(unique.values())


def _check_plain_name(name: str) -> None:
    if not name or name.startswith(".") or any(c in name for c in "/\\:") or name in ("..", "."):
        raise DatasetError(f"{name!r} is not a usable dataset name", hint="use a plain folder name such as MySet")


# ---------------------------------------------------------------------------------------------------------- download


def download(url: str, dest: Path, *, sha256: str | None = None, timeout: float = 60.0,
             progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Stream `url` into a temporary file next to `dest`, check size (and sha256), rename onto `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
    hint_manual = "download the archive by hand and pass it (or its folder) with --from"
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mambaesr-edge"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            digest, done = hashlib.sha256(), 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise DatasetError(f"download of {url} ended after {done:,} of {total:,} bytes",
                               hint="the connection dropped: run the command again")
        if sha256 and digest.hexdigest() != sha256.lower():
            raise DatasetError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256}",
                               hint="the file on the server changed or is corrupt; try a mirror with --base-url")
        os.replace(tmp, dest)
    except urllib.error.HTTPError as exc:
        raise DatasetError(f"download failed: HTTP {exc.code} {exc.reason} for {url}",
                           hint=f"check the name and --base-url; or {hint_manual}") from exc
    except urllib.error.URLError as exc:
        raise DatasetError(f"cannot download {url}: {exc.reason}",
                           hint=f"check the internet connection / proxy; or {hint_manual}") from exc
    except http.client.HTTPException as exc:
        raise DatasetError(f"download of {url} failed: {exc!r}", hint="the connection dropped: run the command again") from exc
    except TimeoutError as exc:
        raise DatasetError(f"download of {url} timed out", hint=f"run it again later; or {hint_manual}") from exc
    except OSError as exc:
        raise _os_error(exc, f"downloading {url} to {dest.parent}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _os_error(exc: OSError, doing: str) -> DatasetError:
    import errno

    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return DatasetError(f"no space left on the disk while {doing}", hint="free some space or pick another --root")
    return DatasetError(f"error while {doing}: {exc}", hint="check that the folder exists and is writable")



# ---------------------------------------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class PreparedDataset:
    name: str
    path: Path
    hr_images: int
    lr_images: int
    status: str  # "prepared", "already there", "replaced"


def verify_dataset(path: Path, spec: DatasetSpec | None = None, scale: int = 4) -> tuple[int, int]:
    """(HR images, LR images) of a prepared set; checks the catalog's counts and that every LR has its HR."""
    entries = find_images(path, scale)  # raises DatasetError for a missing folder / no HR images
    hr, lr = len(entries), sum(1 for e in entries if e[2] is not None)
    lr_dir = Path(path) / "LR_bicubic" / f"X{scale}"
    lr_files = sum(1 for p in lr_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if lr_dir.is_dir() else 0
    for part in spec.parts if spec else ():
        found = lr if part.lr else hr
        if part.lr and found == 0 and lr_files == 0:
            continue  # checked by the caller (LR may be absent from a --from source)
        if part.count is not None and found != part.count:
            kind = "LR (with a matching HR image)" if part.lr else "HR"
            raise DatasetError(f"{path} has {found} {kind} images, expected {part.count}",
                               hint="the archive is incomplete or is another set; delete it and prepare again")
    if lr_files != lr:
        raise DatasetError(f"{lr_dir} has {lr_files} images but only {lr} match an HR image as <stem>x{scale}",
                           hint="LR files must be named like the HR file plus x4 (baby.png -> babyx4.png)")
    return hr, lr


def prepare_datasets(
    names: list[str] | tuple[str, ...],
    root: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    force: bool = False,
    keep_archives: bool = False,
    timeout: float = 60.0,
    catalog: Mapping[str, DatasetSpec] = DATASETS,
    archives: Mapping[str, Archive] = ARCHIVES,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> list[PreparedDataset]:
    """Prepare sets into ROOT/NAME (HR + LR_bicubic/X4): from the internet, or from `source` (folder or archive)."""
    root = Path(root)
    if source is not None and base_url is not None:
        raise DatasetError("give --from or --base-url, not both", hint="--from reads local files; --base-url downloads")
    specs = resolve_names(names, allow_custom=source is not None, catalog=catalog)
    source_path = Path(source) if source is not None else None
    if source_path is not None and not source_path.exists():
        raise DatasetError(f"--from path not found: {source_path}", hint="pass an existing folder or archive")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, f"creating {root}") from exc

    results: list[PreparedDataset] = []
    todo: list[DatasetSpec] = []
    for spec in specs:
        target = root / spec.name
        if target.exists() and not force:
            try:
                hr, lr = verify_dataset(target, spec)
            except DatasetError as exc:
                raise DatasetError(f"{target} exists but does not check out: {exc.message}",
                                   hint="pass --force to replace it") from exc
            log.info("%s is already prepared (%d HR, %d LR images)", target, hr, lr)
            results.append(PreparedDataset(spec.name, target, hr, lr, "already there"))
        else:
            todo.append(spec)

    sources: dict[str, Source] = {}
    opened: dict[Path, Source] = {}  # one reader per file or folder, shared by the sets that need it
    downloaded: list[Path] = []
    try:
        for spec in todo:
            for key in dict.fromkeys(p.archive for p in spec.parts):
                if key not in sources:
                    path = _locate(key, root, source_path, base_url, archives, timeout, progress, downloaded)
                    if path.resolve() not in opened:
                        opened[path.resolve()] = open_source(path)
                    sources[key] = opened[path.resolve()]
            results.append(_unpack(spec, root, sources, force))
    finally:
        for src in opened.values():
            src.close()
        if not keep_archives:
            for path in downloaded:
                path.unlink(missing_ok=True)
            _rmdir_if_empty(root / ".downloads")
    order = {spec.name: i for i, spec in enumerate(specs)}
    return sorted(results, key=lambda r: order[r.name])


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _locate(key: str, root: Path, source_path: Path | None, base_url: str | None,
            archives: Mapping[str, Archive], timeout: float,
            progress: Callable[[str, int, int | None], None] | None, downloaded: list[Path]) -> Path:
    """The file or folder to read archive `key` from: --from, an earlier kept download, or a fresh download."""
    archive = archives.get(key)
    if source_path is not None:
        if source_path.is_dir() and archive is not None and (source_path / archive.file).is_file():
            return source_path / archive.file  # a folder of the catalog's archives
        return source_path  # an unpacked tree, or one archive holding the sets
    if archive is None:
        raise DatasetError(f"no archive {key!r} in the catalog", hint="pass --from DIR")
    dest = root / ".downloads" / archive.file
    if dest.is_file():  # a kept download from an earlier run
        log.info("using %s from an earlier download", dest)
        return dest
    url = f"{base_url.rstrip('/')}/{urllib.parse.quote(archive.file)}" if base_url else archive.url
    log.info("downloading %s", url)
    report = (lambda done, total: progress(archive.file, done, total)) if progress else None
    download(url, dest, sha256=archive.sha256, timeout=timeout, progress=report)
    downloaded.append(dest)
    return dest


def _unpack(spec: DatasetSpec, root: Path, sources: Mapping[str, Source], force: bool) -> PreparedDataset:
    target = root / spec.name
    tmp = root / f".{spec.name}.partial-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        lr_missing = False
        for part in spec.parts:
            src = sources[part.archive]
            members = match_images(src, part.src)
            if not members and part.count is None and not part.lr:
                members = match_images(src, "")  # a --from folder of images without an HR/ subfolder
            if not members:
                if part.lr and (src.is_folder or part.count is None):
                    lr_missing = True  # a local source without LR files: eval makes LR by MATLAB bicubic
                    continue
                raise DatasetError(f"{src.label} has no images in a folder {part.src!r} (for {spec.name})",
                                   hint=f"is it the right archive or folder? it should hold {part.src.split('|')[0]}/<images>")
            if part.count is not None and len(members) != part.count:
                raise DatasetError(f"{src.label}: {'/'.join(members[0][:-1])} holds {len(members)} images, "
                                   f"{spec.name} has {part.count}",
                                   hint="the archive is incomplete or is another version; download it again")
            out_dir = tmp / part.dest
            out_dir.mkdir(parents=True, exist_ok=True)
            for member in members:
                _copy_member(src, member, out_dir / member[-1])
        hr, lr = verify_dataset(tmp, spec)
        if lr_missing:
            log.warning("%s: no LR_bicubic/X4 images in the source; evaluation will make them by MATLAB bicubic", spec.name)
        status = "prepared"
        if target.exists():  # --force: swap in the new set, then drop the old one
            old = root / f".{spec.name}.old-{secrets.token_hex(4)}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
            status = "replaced"
        else:
            os.replace(tmp, target)
    except OSError as exc:
        raise _os_error(exc, f"unpacking {spec.name} into {root}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PreparedDataset(spec.name, target, hr, lr, status)


_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")  # image file signatures


def _copy_member(src: Source, member: tuple[str, ...], dest: Path) -> None:
    if dest.exists():
        raise DatasetError(f"{src.label} holds two images named {member[-1]} for the same folder",
                           hint="clean up the source folder")
    try:
        with src.open(member) as fin, open(dest, "wb") as fout:
            head = fin.read(1 << 16)
            if not head.startswith(_MAGIC):
                raise DatasetError(f"{src.label}: {'/'.join(member)} is not an image (unknown header)",
                                   hint="the archive is corrupt; download it again")
            fout.write(head)
            shutil.copyfileobj(fin, fout, 1 << 20)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise corrupt_archive(Path(src.label), exc) from exc


def catalog_rows() -> Iterator[tuple[str, str, str, str]]:
    """(name, images, archives, licence) for `data list`."""
    for spec in DATASETS.values():
        counts = "+".join(str(p.count) for p in spec.parts)
        files = ", ".join(dict.fromkeys(ARCHIVES[p.archive].file for p in spec.parts))
        yield spec.name, f"{counts} (HR+LR x4)", files, spec.licence
