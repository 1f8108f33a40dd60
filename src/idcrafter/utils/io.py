"""Writes that never lose data: every file a command writes goes through here.

- `atomic_write_bytes/text/json`: write to a temporary file in the same folder, fsync it,
  rename it over the target (atomic on POSIX), fsync the folder. A kill at any point leaves
  either the old file or the new one, never a truncated one.
- `append_line`: logs are appended (one line, flushed and fsynced), never rewritten. A line cut
  by a kill is closed with a newline before the next append, so it can only spoil itself
  (readers skip it); every earlier line stays as it was.
- `replace_dir`: a folder is replaced by renaming the old one aside (under a fresh hidden name,
  never one that exists), renaming the new one in, then deleting the old one; a kill in
  between leaves a complete folder under one of the names.
- Folder markers: a command that creates an output folder writes `.idcrafter` into it naming the
  tool; `check_writable_dir` refuses a non-empty folder without the marker of that tool (folders
  written before markers existed are recognised by the files the tool always writes).
- Output paths: `ensure_dir` / `check_output_file` turn the OS errors of a bad output path
  (a file in the way, no permission, read-only disk) into one-line `OutputPathError`s.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable

from idcrafter.errors import FolderInUseError, OutputPathError, describe_os_error

MARKER = ".idcrafter"


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_file_ancestor(path: Path) -> Path | None:
    """The nearest ancestor of `path` that exists and is not a folder (None if there is none)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def ensure_dir(path: str | Path) -> Path:
    """Create folder `path` with its parents (like mkdir -p); a bad path is an `OutputPathError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"cannot write into {path}: it is a file, not a folder; choose another path")
    blocker = _first_file_ancestor(path)
    if blocker is not None:
        raise OutputPathError(f"cannot create {path}: {blocker} is a file, not a folder; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(describe_os_error(exc)) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write into {path}: permission denied; choose another path")
    return path


def check_output_file(path: str | Path, suffixes: Iterable[str] = (), overwrite: bool = False,
                      option: str = "--out") -> Path:
    """Validate an output file path (and create its folder): not a folder, the right suffix, its
    folder writable, and not an existing file unless `overwrite`."""
    path = Path(path)
    suffixes = tuple(suffixes)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder: pass a file path"
                              + (f" ending in {suffixes[0]}" if suffixes else ""))
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputPathError(f"{option} {path} must end in {' or '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{option} {path} already exists: pass --overwrite to replace it, or choose another path")
    ensure_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """0666 minus the process umask: the mode `open(path, "w")` would give a new file."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (tmp + fsync + rename + fsync of the folder)."""
    path = Path(path)
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputPathError(f"cannot write {path}: {parent} is a file, not a folder; choose another path")
    if not parent.exists():
        raise OutputPathError(f"cannot write {path}: folder {parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(parent))
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {describe_os_error(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), _file_mode())  # mkstemp makes 0600; a written file gets the usual mode
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM):
            raise OutputPathError(f"cannot write {path}: {describe_os_error(exc)}") from exc
        raise
    fsync_dir(parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a newline is added) and fsync: earlier lines are never rewritten. A last
    line cut by a kill (no newline) is closed first, so the new line starts on its own."""
    path = Path(path)
    text = line.rstrip("\n") + "\n"
    try:
        with open(path, "a+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end > 0:
                fh.seek(end - 1)
                if fh.read(1) != b"\n":
                    text = "\n" + text
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputPathError(describe_os_error(exc)) from exc


def read_lines_json(path: str | Path) -> list[Any]:
    """The JSON objects of a JSONL log, skipping lines a kill cut short (they do not parse)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def temp_dir_beside(target: str | Path) -> Path:
    """A new, empty hidden folder next to `target` (a fresh name: nothing existing is reused)."""
    target = Path(target)
    ensure_dir(target.parent)
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent)))
    os.chmod(path, 0o777 & ~_umask())  # mkdtemp makes 0700; the folder it becomes gets the usual mode
    return path


def replace_dir(new: str | Path, target: str | Path, keep_foreign: bool = False) -> Path:
    """Move folder `new` to `target`. An existing `target` is renamed aside first (to a fresh
    hidden name) and deleted only once `new` is in place, so a kill leaves a whole folder at
    `target` or at the aside name. With `keep_foreign`, top-level files of the old folder that
    `new` does not have (files a person added, e.g. a PROVENANCE.md) are copied into `new`
    (folders are not: an old component folder must not outlive its model)."""
    new, target = Path(new), Path(target)
    old = None
    if target.exists():
        if keep_foreign:
            for entry in target.iterdir():  # copied, not moved: the old folder stays whole until the swap
                if entry.is_file() and entry.name != MARKER and not (new / entry.name).exists():
                    shutil.copy2(entry, new / entry.name)
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.old")
        os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old)
    return target


def mark_dir(path: str | Path, tool: str) -> None:
    """Record that `tool` created (and so may rewrite) folder `path`."""
    atomic_write_json(Path(path) / MARKER, {"tool": tool})


def dir_owner(path: str | Path) -> str | None:
    """The tool named by `path`'s marker, or None (no marker or unreadable)."""
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("tool")
    except (OSError, ValueError, AttributeError):
        return None


def check_writable_dir(path: str | Path, tool: str, fix: str = "--overwrite",
                       signature: Iterable[str] = ()) -> bool:
    """Raise `FolderInUseError` unless `path` is absent, empty, or made by `tool`: marked by it, or
    (a folder written before markers existed) holding every file of `signature`, the files the
    tool always writes. Returns True when the folder already holds output of `tool`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} is a file, not a folder: choose another output folder")
    blocker = _first_file_ancestor(path)
    if blocker is not None:
        raise OutputPathError(f"cannot create {path}: {blocker} is a file, not a folder; choose another path")
    if not path.exists() or not any(path.iterdir()):
        return False
    if dir_owner(path) == tool:
        return True
    signature = tuple(signature)
    if dir_owner(path) is None and signature and all((path / name).exists() for name in signature):
        return True
    other = dir_owner(path)
    made = f"was made by `{other}`" if other else f"was not made by `{tool}`"
    raise FolderInUseError(f"{path} is not empty and {made}: choose an empty or new folder"
                           + (f" (or pass {fix})" if fix else ""))


def remove_entries(path: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the listed top-level entries of folder `path` (only those: what a tool wrote)."""
    removed = []
    for name in names:
        p = Path(path) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(p)
    return removed


def claim_output_dir(path: str | Path, tool: str, signature: Iterable[str] = ()) -> Path:
    """Make `path` an output folder of `tool`: refused if it holds anything `tool` did not write
    (`check_writable_dir`), else created and marked. Files `tool` writes there may be replaced."""
    check_writable_dir(path, tool, fix="", signature=signature)
    ensure_dir(path)
    mark_dir(path, tool)
    return Path(path)
