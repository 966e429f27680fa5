"""Atomic outputs: a file is written to a temporary file beside the target and renamed, a
folder of files is filled in a staging folder and moved in at the end, so a reader never sees
a half-written result and a failed or interrupted run leaves the previous output as it was.

An existing symlink is written through (its target is replaced, the link stays); an existing
special file (`/dev/null`, a FIFO) is written to directly, since it cannot be renamed over."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputError, os_error_line

__all__ = ["check_output_file", "atomic_path", "atomic_open", "write_json", "check_output_dir", "atomic_dir",
           "chmod_like_new", "process_umask"]

_log = logging.getLogger(__name__)


def _is_special(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _reason(exc: OSError) -> str:
    return (exc.strerror or exc.__class__.__name__).lower()


def _make_parent(target: Path, what: str) -> None:
    """The output's folder: made (and logged) when only it is missing, as `mkdir` would; a
    missing tree above it is a mistyped path, refused with one line."""
    parent = target.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise OutputError(f"{what} {target}: {ancestor} is a file, not a folder")
    if parent.is_dir():
        return
    if not parent.parent.is_dir():
        raise OutputError(f"{what} {target}: the folder {parent.parent} does not exist (create it first)")
    try:
        parent.mkdir()
    except FileExistsError:  # made by another process meanwhile
        pass
    except OSError as exc:
        raise OutputError(f"{what} {target}: cannot create its folder ({_reason(exc)})") from None
    _log.info("created the folder %s for %s", parent, what)


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail early, before any long work, if `path` cannot be written as a file; returns the
    path atomic writes will replace (a symlink resolved to its target)."""
    target = Path(path)
    if target.is_symlink():
        target = target.resolve()
    if target.is_dir():
        raise OutputError(f"{what} {path}: is a folder; expected a file path")
    if _is_special(target):
        return target
    _make_parent(target, what)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {target.parent} ({_reason(exc)})") from None
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` on success."""
    target = check_output_file(path, what)
    if _is_special(target):
        yield target
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {target.parent} ({_reason(exc)})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        chmod_like_new(tmp_path, 0o666, target)
        yield tmp_path
        try:
            os.replace(tmp_path, target)
        except OSError as exc:
            raise OutputError(f"{what} {path}: cannot replace it ({os_error_line(exc)})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", what: str = "output") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces `path` only when the block succeeds."""
    with atomic_path(path, what) as tmp:
        try:
            handle = open(tmp, mode)
        except OSError as exc:
            raise OutputError(f"{what} {path}: {os_error_line(exc)}") from None
        with handle:
            yield handle


def write_json(path: str | os.PathLike, obj: Any, what: str = "output") -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_open(path, what=what) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail early if `path` cannot become a folder we write into."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{what} {path}: is a file; expected a folder")
    _make_parent(target, what)
    probe_dir = target if target.is_dir() else target.parent
    try:
        tempfile.TemporaryDirectory(dir=probe_dir).cleanup()
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {probe_dir} ({_reason(exc)})") from None
    return target


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; on success its files move into `path`
    (created if missing; files of the same name replaced, others kept); on failure or
    interruption the staging folder is removed and `path` is untouched."""
    target = check_output_dir(path, what)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        chmod_like_new(staging, 0o777)
        yield staging
        _move_in(staging, target, what)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def process_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_like_new(path: Path, base: int, replaces: Path | None = None) -> None:
    """Give a temporary file or folder (mkstemp/mkdtemp make them 0600/0700) the mode a plain
    open()/mkdir() would: the file it replaces keeps its own mode, otherwise `base` less the umask."""
    try:
        mode = replaces.stat().st_mode & 0o7777 if replaces is not None and replaces.is_file() else None
    except OSError:
        mode = None
    os.chmod(path, mode if mode is not None else base & ~process_umask())


def _move_in(staging: Path, target: Path, what: str) -> None:
    try:
        if not target.exists():
            os.rename(staging, target)
            return
        for src in sorted(staging.rglob("*")):
            dst = target / src.relative_to(staging)
            if src.is_dir():
                if dst.exists() and not dst.is_dir():
                    raise OutputError(f"{what} {target}: {dst} is a file where a folder is written")
                dst.mkdir(exist_ok=True)
            else:
                if dst.is_dir():
                    raise OutputError(f"{what} {target}: {dst} is a folder where a file is written")
                os.replace(src, dst)
    except OSError as exc:
        raise OutputError(f"{what} {target}: {os_error_line(exc)}") from None
