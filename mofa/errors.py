"""The one error type the command line turns into a one-line message (no traceback)."""


class MofaError(Exception):
    """A user-facing problem: bad input, missing file, bad config key. The message names the
    file or key, what was expected, and what to do."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """'Type: message' of an exception on one short line, for a MofaError's parenthesis: some libraries'
    messages (torch.load's) run over several lines and paragraphs."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"
