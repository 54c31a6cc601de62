"""The one exception type a user of adnify has to know about, and how other errors become one line of it."""

import re


class AdnifyError(Exception):
    """A problem with the user's input (model name, file, pattern, option).

    The command line prints its message as one line on stderr and exits non-zero,
    without a traceback (set ``ADNIFY_DEBUG=1`` to see it).
    """


class UnknownModelError(AdnifyError):
    """A name that is no timm model (callers that also accept directories add that to the message)."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (torch.export and dynamo colour their messages)."""
    return _ANSI.sub("", text)


def first_line(error: BaseException, *, with_type: bool = False) -> str:
    """The first line of ``error``'s message, without terminal colours, for a one-line error message.

    An empty message gives the exception's type name; ``with_type`` puts ``TypeName: `` before the line.
    """
    text = strip_ansi(str(error)).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0].strip()
    return f"{type(error).__name__}: {line}" if with_type else line
