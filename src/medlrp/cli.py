"""The ``medlrp`` command line: demo, explain, evaluate, train, phantom, batch.

Each command lives in its own module under :mod:`medlrp.commands` and registers itself on ``app``.
Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import os
import sys

import typer

from medlrp.commands import COMMAND_MODULES

app = typer.Typer(
    name="medlrp",
    help="Explain medical image classifiers (LRP, Grad-CAM, gradients), measure the explanations, "
    "and train models that look where they should.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

for _module in COMMAND_MODULES:
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return (and exit with) its exit code."""
    from medlrp.errors import InputError

    try:
        rv = app(args=argv, standalone_mode=False)
    except InputError as exc:
        print(f"medlrp: error: {exc}", file=sys.stderr)
        code = 2
    except (typer.Exit, SystemExit) as exc:
        code = int(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        print("medlrp: aborted", file=sys.stderr)
        code = 1
    except Exception as exc:  # click's usage errors carry their own exit code 2
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            code = exc.exit_code
        elif isinstance(exc, KeyboardInterrupt):
            code = 130
        else:
            if os.environ.get("MEDLRP_DEBUG"):
                raise
            print(
                f"medlrp: internal error: {type(exc).__name__}: {exc} (set MEDLRP_DEBUG=1 for a traceback)",
                file=sys.stderr,
            )
            code = 1
    else:
        # With standalone_mode=False click returns the code of a typer.Exit instead of raising it.
        code = rv if isinstance(rv, int) else 0
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
