"""``facepipe`` command line: thin commands, one per stage. Errors reach the user as one line, exit 1.

One module per command group: :mod:`~facepipe.cli.pipeline` (the stages, in pipeline order), :mod:`~facepipe.cli.info`
(listings, inspect), :mod:`~facepipe.cli.workbench` (features, compare), :mod:`~facepipe.cli.interop` (export, import);
:mod:`~facepipe.cli._common` holds the one config path (``--params``, named options, ``-S``).
"""

from __future__ import annotations

import logging
import sys
import traceback

import typer

from facepipe import __version__
from facepipe.cli import info, interop, pipeline, workbench
from facepipe.errors import FacepipeError, Interrupted

app = typer.Typer(
    name="facepipe",
    help="Reproducible, fast data preparation for face-forgery (deepfake) detection research.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_STATE = {"verbose": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"facepipe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging and full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _STATE["verbose"] = verbose
    if verbose:  # FFmpeg's own messages (facepipe.video), in this process and the workers it starts
        import os

        os.environ["FACEPIPE_VERBOSE"] = "1"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("facepipe").setLevel(logging.INFO)


for _group in (pipeline.app, info.app, workbench.app):  # merged: their commands are facepipe's own
    app.add_typer(_group)
app.add_typer(interop.export_app, name="export")
app.add_typer(interop.import_app, name="import")


def _sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler, ``kill``): stop as on Ctrl-C — the stages clean up and say how far they got — and exit
    143."""
    _STATE["signal"] = "SIGTERM"
    raise KeyboardInterrupt


def _sigint(signum, frame) -> None:
    """Ctrl-C: as Python's own handler (a KeyboardInterrupt), exit 130."""
    _STATE["signal"] = "SIGINT"
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point: errors as one line (exit 1), Ctrl-C / SIGTERM as a summary (exit 130 / 143)."""
    import signal

    signal.signal(signal.SIGTERM, _sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (a background job's SIG_IGN stays)
        signal.signal(signal.SIGINT, _sigint)
    code = lambda: 143 if _STATE.get("signal") == "SIGTERM" else 130  # noqa: E731
    try:
        app()
    except Interrupted as e:
        typer.echo(f"facepipe: {e}", err=True)
        sys.exit(code())
    except FacepipeError as e:
        if _STATE["verbose"]:
            traceback.print_exc()
        typer.echo(f"facepipe: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("facepipe: interrupted; what was finished is kept (outputs are written by temp name, then "
                   "renamed): rerun the same command to resume", err=True)
        sys.exit(code())
    except OSError as e:  # a file system error outside what a stage checks: one line, the traceback with -v
        if _STATE["verbose"]:
            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        typer.echo(f"facepipe: error: {where}{e.strerror or e} (-v for the traceback)", err=True)
        sys.exit(1)
