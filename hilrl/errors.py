"""The one exception family the `hilrl` command turns into a single readable error line."""


class HilrlError(Exception):
    """A user-facing error: its message names what was wrong and how to fix it."""
