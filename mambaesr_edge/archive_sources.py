"""Files of a dataset archive (zip, tar of any compression) or a local folder, read safely: the sources
`data_prepare` unpacks from.

Opening checks integrity (``zipfile.testzip``; every tar member read once, the end-of-archive block required, a
compressed stream read to its CRC) and refuses members that escape the archive (absolute paths, drive letters,
``..``, links pointing outside). Members are addressed by their path components; a link inside an archive reads as
its target. ``match_images`` finds the one folder of images a dataset part names.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .datasets import IMAGE_SUFFIXES
from .errors import DatasetError

__all__ = ["Source", "corrupt_archive", "match_images", "open_source"]


def _safe_parts(name: str, archive: Path) -> tuple[str, ...]:
    """A member name as path components; refuses absolute paths, drive letters and '..'."""
    unified = name.replace("\\", "/")
    path = PurePosixPath(unified)
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if path.is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        raise DatasetError(f"unsafe member {name!r} in {archive.name}: it points outside the archive",
                           hint="the archive is corrupt or malicious; get it from the official site")
    return parts


def _inside(base: tuple[str, ...], target: str) -> tuple[str, ...] | None:
    """Components of link `target` resolved against folder `base`, or None when it leaves the archive."""
    if target.startswith(("/", "\\")) or (len(target) > 1 and target[1] == ":"):
        return None
    parts = list(base)
    for piece in target.replace("\\", "/").split("/"):
        if piece in ("", "."):
            continue
        if piece == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(piece)
    return tuple(parts)


class Source:
    """Files of an archive or a folder, by path components; `open` gives a binary stream. ``is_folder``: a local
    folder (``--from DIR``), not an archive."""

    label: str
    is_folder: bool = False

    def files(self) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def open(self, member: tuple[str, ...]) -> BinaryIO:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Archive(Source):
    """An archive file, opened and checked whole when constructed (and closed again when the check fails).
    ``handle``: the open ZipFile / TarFile; ``members``: path components -> the archive's own entry."""

    def __init__(self, path: Path) -> None:
        self.label = str(path)
        self.handle = None
        self.members: dict = {}
        try:
            self._check(path)
        except BaseException:
            self.close()
            raise

    def _check(self, path: Path) -> None:
        raise NotImplementedError

    def files(self) -> list[tuple[str, ...]]:
        return list(self.members)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class _ZipSource(_Archive):
    def _check(self, path: Path) -> None:
        try:
            self.handle = zipfile.ZipFile(path)
            bad = self.handle.testzip()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
            raise corrupt_archive(path, exc) from exc
        if bad is not None:
            raise corrupt_archive(path, f"CRC error in member {bad}")
        links: dict[tuple[str, ...], tuple[str, ...]] = {}
        for info in self.handle.infolist():
            parts = _safe_parts(info.filename, path)
            if info.is_dir() or not parts:
                continue
            if stat.S_ISLNK(info.external_attr >> 16):  # a symlink stored by Info-ZIP: its data is the target
                target = _inside(parts[:-1], self.handle.read(info).decode("utf-8", "replace"))
                if target is None:
                    raise _link_outside(path, info.filename)
                links[parts] = target
                continue
            self.members[parts] = info.filename
        for parts, target in links.items():  # a link inside the archive reads as a copy of its target
            if target in self.members:
                self.members[parts] = self.members[target]

    def open(self, member: tuple[str, ...]) -> BinaryIO:
        return self.handle.open(self.members[member])


class _TarSource(_Archive):
    def _check(self, path: Path) -> None:
        try:
            self.handle = tarfile.open(path, "r:*")  # noqa: SIM115  (closed by close())
            members = self.handle.getmembers()
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise corrupt_archive(path, exc) from exc
        if not members:
            raise corrupt_archive(path, "no members")
        for member in members:
            parts = _safe_parts(member.name, path)
            if member.issym() or member.islnk():
                base = parts[:-1] if member.issym() else ()  # hard links name a path from the archive's top
                if _inside(base, member.linkname) is None:
                    raise _link_outside(path, member.name)
            if (member.isfile() or member.issym() or member.islnk()) and parts:
                self.members[parts] = member
        try:  # read every file once: catches truncation and gzip/bzip2/xz CRC errors
            for member in self.members.values():
                if member.isfile():
                    stream = self.handle.extractfile(member)
                    while stream is not None and stream.read(1 << 20):
                        pass
            # tarfile stops quietly where a truncated archive ends: require the end-of-archive zero block
            fileobj = self.handle.fileobj
            fileobj.seek(self.handle.offset)
            end = fileobj.read(tarfile.BLOCKSIZE)
            if len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
                raise corrupt_archive(path, "it ends early (no end-of-archive marker): the file is truncated")
            while fileobj.read(1 << 20):  # to the end of a compressed stream, where its CRC is checked
                pass
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise corrupt_archive(path, exc) from exc

    def open(self, member: tuple[str, ...]) -> BinaryIO:
        try:
            stream = self.handle.extractfile(self.members[member])  # follows links inside the archive
        except (KeyError, tarfile.TarError) as exc:
            raise corrupt_archive(Path(self.label), f"cannot read {'/'.join(member)}: {exc}") from exc
        if stream is None:
            raise corrupt_archive(Path(self.label), f"{'/'.join(member)} is not a file")
        return stream  # type: ignore[return-value]


class _DirSource(Source):
    """A local folder; member paths start with the folder's own name (so --from .../Set5 matches "Set5/HR")."""

    is_folder = True

    def __init__(self, path: Path) -> None:
        self.label = str(path)
        self.root = path.resolve()
        self.paths: dict[tuple[str, ...], Path] = {}
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = Path(folder).relative_to(self.root).parts
            for name in names:
                if not name.startswith("."):
                    self.paths[(self.root.name, *rel, name)] = Path(folder) / name

    def files(self) -> list[tuple[str, ...]]:
        return list(self.paths)

    def open(self, member: tuple[str, ...]) -> BinaryIO:
        return open(self.paths[member], "rb")


def corrupt_archive(path: Path, detail: object) -> DatasetError:
    return DatasetError(f"corrupt or unreadable archive {path}: {detail}",
                        hint="delete it and download it again (or get it from another mirror with --base-url)")


def _link_outside(path: Path, name: str) -> DatasetError:
    return DatasetError(f"unsafe link {name!r} in {path.name}: it points outside the archive",
                        hint="the archive is corrupt or malicious; get it from the official site")


def open_source(path: Path) -> Source:
    if path.is_dir():
        return _DirSource(path)
    if not path.is_file():
        raise DatasetError(f"not found: {path}", hint="pass an existing folder or archive with --from")
    if zipfile.is_zipfile(path):
        return _ZipSource(path)
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as exc:
        raise corrupt_archive(path, exc) from exc
    if is_tar or path.name.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return _TarSource(path)
    raise corrupt_archive(path, "neither a zip nor a tar archive")


def _is_image_name(parts: tuple[str, ...]) -> bool:
    return PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES and not parts[-1].startswith(".")


def match_images(source: Source, src: str) -> list[tuple[str, ...]]:
    """Image members whose folder ends with `src` (case-insensitive); all from one folder, else an error.

    `src` may list alternatives as "B100/HR|BSD100/HR": the first that matches wins.
    """
    if "|" in src:
        for alternative in src.split("|"):
            if found := match_images(source, alternative):
                return found
        return []
    want = tuple(p.lower() for p in src.split("/") if p)
    folders: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for parts in source.files():
        if not _is_image_name(parts):
            continue
        folder = parts[:-1]
        if not want or (len(folder) >= len(want) and tuple(p.lower() for p in folder[-len(want):]) == want):
            folders.setdefault(folder, []).append(parts)  # src "": any folder (it must be the only one with images)
    if len(folders) > 1:
        names = ", ".join("/".join(f) for f in sorted(folders))
        raise DatasetError(f"{source.label} holds several folders {'matching ' + repr(src) if src else 'of images'}: {names}",
                           hint="pass the folder of the one set you mean with --from")
    return sorted(next(iter(folders.values()))) if folders else []

