"""User-facing errors.

Every error a user can cause with bad input is an `InputError` whose message says what was
wrong and how to fix it, in one line. The CLI prints it without a traceback and exits with 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: a one-line message saying what was wrong and how to fix it."""


class MissingWeightsError(InputError, FileNotFoundError):
    """A model folder or weights file is missing; the message names what to put where."""


def run_cli(app) -> None:
    """Run a typer app; an `InputError` becomes one line on stderr and exit status 2."""
    import typer

    try:
        app()
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2)
