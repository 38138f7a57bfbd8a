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
    except Exception as exc:
        if hasattr(exc, "exit_code") and hasattr(exc, "show"):
            # click's usage errors (typer may bundle its own click, so match by shape): one line, code 2.
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            print(f"medlrp: error: {message}{hint}", file=sys.stderr)
            code = int(exc.exit_code)
        else:
            if os.environ.get("MEDLRP_DEBUG"):
                raise
            print(
                f"medlrp: internal error: {type(exc).__name__}: {exc} (set MEDLRP_DEBUG=1 for a traceback)",
                file=sys.stderr,
            )
            code = 1
    except KeyboardInterrupt:
        code = 130
    else:
        # With standalone_mode=False click returns the code of a typer.Exit instead of raising it.
        code = rv if isinstance(rv, int) else 0
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
