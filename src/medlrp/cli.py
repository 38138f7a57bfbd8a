"""The medlrp command line: demo, explain, evaluate, train, phantom, batch.

Each command lives in its own module under medlrp.commands and registers itself on ``app``; the modules
import torch and the methods only when their command runs, so --help and --version answer at once.
Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import os
import sys

import typer

from medlrp import __version__
from medlrp.commands import COMMAND_MODULES

HELP = (
    "Explain medical image classifiers (LRP, Grad-CAM, gradients), measure the explanations, "
    "and train models that look where they should."
)

app = typer.Typer(
    name="medlrp",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"medlrp {__version__}")
        raise typer.Exit(0)


@app.callback(help=HELP)
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Options before the command (``--version``)."""


for _module in COMMAND_MODULES:
    _module.register(app)


def _usage(prog: str) -> str:
    """The usage line and the commands, one line each (what a bare ``medlrp`` prints)."""
    import click

    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name=prog)
    lines = [group.get_usage(ctx), "", "Commands:"]
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        command = group.get_command(ctx, name)  # type: ignore[attr-defined]
        lines.append(f"  {name:<9} {command.get_short_help_str(68) if command else ''}")
    lines += ["", f"Run '{prog} COMMAND --help' for a command's options, '{prog} --help' for more."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return (and exit with) its exit code."""
    from medlrp.errors import InputError

    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        print(_usage("medlrp"), file=sys.stderr)
        code = 2
    else:
        code = _run(args, InputError)
    if argv is None:
        sys.exit(code)
    return code


def _run(args: list[str], input_error: type[Exception]) -> int:
    try:
        rv = app(args=args, prog_name="medlrp", standalone_mode=False)
    except input_error as exc:
        print(f"medlrp: error: {exc}", file=sys.stderr)
        return 2
    except (typer.Exit, SystemExit) as exc:
        return int(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        print("medlrp: aborted", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if hasattr(exc, "exit_code") and hasattr(exc, "show"):
            # click's usage errors (typer may bundle its own click, so match by shape): one line, code 2.
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            print(f"medlrp: error: {message}{hint}", file=sys.stderr)
            return int(exc.exit_code)
        if os.environ.get("MEDLRP_DEBUG"):
            raise
        print(
            f"medlrp: internal error: {type(exc).__name__}: {exc} (set MEDLRP_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
    # With standalone_mode=False click returns the code of a typer.Exit instead of raising it.
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    main()
