"""The one error type the command line turns into a one-line message (no traceback)."""


class MofaError(Exception):
    """A user-facing problem: bad input, missing file, bad config key. The message names the
    file or key, what was expected, and what to do."""
