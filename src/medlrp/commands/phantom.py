"""`medlrp phantom` (not built yet: says so and exits 2)."""

from __future__ import annotations

import typer

from medlrp.errors import InputError


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("phantom", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def phantom() -> None:
        """Not available yet."""
        raise InputError("'medlrp phantom' is not available yet")
