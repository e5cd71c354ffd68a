"""User-facing errors.

Anything raised as :class:`SealError` is printed by the CLI as one line
(``error: ...``) with exit status 2, never as a traceback: it means the input or
the configuration is wrong, not the program.
"""


class SealError(Exception):
    """An error the user can fix (bad input, bad config, missing file)."""


class ConfigError(SealError):
    """A configuration key is unknown, missing or of the wrong type."""


class InputError(SealError):
    """An input file cannot be read at all (not a per-row problem)."""
