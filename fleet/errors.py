"""Errors a user can act on. Each names the file, the key and what was expected."""
from __future__ import annotations


class FleetError(Exception):
    """A failure with a message meant for the user (no traceback needed)."""


class InputError(FleetError):
    """Bad input found before any host is touched: inventory, vars, specs, templates, patterns."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file, self.key, self.detail = file, key, message
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class InputErrors(InputError):
    """Several input errors gathered in one pass, so the user fixes them all at once."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = errors
        FleetError.__init__(self, "\n".join(str(e) for e in errors))
