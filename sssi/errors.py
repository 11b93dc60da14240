"""Errors a user can act on.

Every exception raised for bad input (a missing tile, a corrupt GeoTIFF, a wrong band
count, a config key that makes no sense) derives from :class:`SssiError`. Entry points
catch it and print its message as one line, so the message itself must name the file
or key and say what was expected.
"""


class SssiError(Exception):
    """Base class of the errors sssi raises for input a user can fix."""


class DataError(SssiError):
    """A dataset on disk is missing, malformed or inconsistent."""


class ConfigError(SssiError):
    """A configuration value is invalid."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors can run for pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
