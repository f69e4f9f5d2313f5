"""How a user boundary (`mofa`, a stage, the workflow check) ends a problem: the one error type the
command line turns into a one-line message (no traceback), the command-line parser whose own errors are
one line too, and SIGTERM raised as Ctrl-C is, so that nothing partial is left."""
import argparse
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager


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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a workflow engine or a cluster cancelling the job), raised as Ctrl-C's KeyboardInterrupt is,
    so that what is being written is removed on the way out (atomic writers, `.partial` folders)."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM in this process raises Terminated; processes forked inside it (helpers)
    keep SIGTERM's default action, as their parent ends them with it."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: SIGTERM stays as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
