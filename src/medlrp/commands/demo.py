"""`medlrp demo` (not built yet: says so and exits 2)."""

from __future__ import annotations

import typer

from medlrp.errors import InputError


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("demo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def demo() -> None:
        """Not available yet."""
        raise InputError("'medlrp demo' is not available yet")
