"""The one field error: a value is invalid and ``field`` names it. Configs raise it as ``ConfigError``, requests as
``InvalidRequestError`` (the server maps that one to INVALID_ARGUMENT with a BadRequest field violation)."""

from __future__ import annotations


class FieldError(ValueError):
    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.description = message

    def __reduce__(self):  # crosses process boundaries (Ray replicas) with its field intact
        return type(self), (self.field, self.description)


class ConfigError(FieldError):
    """A configuration value is invalid: a SWAA knob, an engine, scheduler or cache setting, an adapter folder."""


class InvalidRequestError(FieldError):
    """A request parameter is invalid."""
