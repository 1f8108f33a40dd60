"""User-facing errors.

Every error a user can cause with bad input is an `InputError` whose message says what was
wrong and how to fix it, in one line. The CLI prints it without a traceback and exits with 2;
the Python API raises the same error, so a caller can catch it (`except InputError`).

Subclasses say which kind of input was wrong (all are `InputError`s, and the ones about files
are also the matching built-in error, so older `except FileNotFoundError` code still works):

| class | raised for |
|---|---|
| `MissingWeightsError` | a model folder or weights file that is not there |
| `CorruptFileError` | a file that is there but cannot be read (bad header, bad JSON, wrong types) |
| `OutputPathError` | an output path that cannot be written (parent is a file, read-only, ...) |
| `FolderInUseError` | an output folder that holds something this command did not make |
| `LimitError` | a value outside the documented limits (`idcrafter.validation.LIMITS`) |
| `ConfigError` | a training config value that makes no sense (`optim.lr=0`, ...) |
| `AuditRewardError` | a reward built on the audit judge (`judge.audit`: it only measures) |
"""

from __future__ import annotations

import errno
import sys


class InputError(ValueError):
    """Bad input from the user: a one-line message saying what was wrong and how to fix it."""

    def __init__(self, message: str = "") -> None:
        # one line, whatever the message was built from (an OS error, a library's message)
        super().__init__(" ".join(str(message).split()))


class MissingWeightsError(InputError, FileNotFoundError):
    """A model folder or weights file is missing; the message names what to put where."""


class CorruptFileError(InputError):
    """A file exists but cannot be used: unreadable, wrong format, or values of the wrong type."""


class OutputPathError(InputError, OSError):
    """An output path that cannot be written: its parent is a file, it is read-only, ..."""


class FolderInUseError(InputError):
    """An output folder holds something this command did not make (or a run it must not replace)."""


class LimitError(InputError):
    """A value outside the documented limits (frames, sizes, references, prompt length, ...)."""


class ConfigError(InputError):
    """A training-config value that makes no sense (zero or NaN learning rate, negative every, ...)."""


class AuditRewardError(InputError):
    """A reward built on the audit judge, which held-out evaluation and the hacking monitor use
    and no reward may (`idcrafter.judge.audit`)."""


def describe_os_error(exc: OSError) -> str:
    """One line for an OS error on a user-given path (permission, missing folder, a file in the way)."""
    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    hints = {errno.EACCES: "check its permissions or choose another path",
             errno.EPERM: "check its permissions or choose another path",
             errno.EROFS: "the file system is read-only: choose another path",
             errno.ENOENT: "check the path", errno.ENOTDIR: "a part of the path is a file, not a folder",
             errno.EISDIR: "it is a folder: pass a file path", errno.ENOSPC: "the disk is full: free space",
             errno.EEXIST: "it already exists: choose another path"}
    hint = hints.get(exc.errno or -1, "check the path")
    return f"cannot access{where}: {exc.strerror or exc.__class__.__name__} ({hint})"


def run_cli(app) -> None:
    """Run a typer app: an `InputError`, a command-line usage error, or an OS error on a path
    the user gave becomes one line on stderr and exit status 2 (no traceback)."""
    try:  # typer >= 0.20 vendors click as typer._click; older ones use click itself
        from typer import _click as click
    except ImportError:  # pragma: no cover
        import click

    abort = getattr(click.exceptions, "Abort", ())  # (): catches nothing where there is no Abort
    try:
        code = app(standalone_mode=False)
    except InputError as exc:
        _fail(str(exc))
    except abort:
        _fail("aborted")
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: its help, as click prints it
        exc.show()
        raise SystemExit(2)
    except click.exceptions.UsageError as exc:  # bad option, missing option, bad value type
        _fail(f"{exc.format_message()} (see --help)")
    except click.exceptions.ClickException as exc:
        _fail(exc.format_message())
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        if getattr(exc, "filename", None) is None:
            raise
        _fail(describe_os_error(exc))
    except UnicodeError as exc:
        _fail(f"text that is not valid UTF-8 was given ({exc.__class__.__name__}): pass UTF-8 text")
    if isinstance(code, int) and code:
        raise SystemExit(code)


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    raise SystemExit(2)
