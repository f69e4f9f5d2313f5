"""The one error type the command line turns into a one-line message (no traceback), and the
command-line parser whose own errors are one line too."""
import argparse


class MofaError(Exception):
    """A user-facing problem: bad input, missing file, bad config key. The message names the
    file or key, what was expected, and what to do."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """'Type: message' of an exception on one short line, for a MofaError's parenthesis: some libraries'
    messages (torch.load's) run over several lines and paragraphs."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad command line is one line (argparse prints its usage first) with
    exit status 2, as every other bad input at `mofa`, a stage or the workflow check."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")
