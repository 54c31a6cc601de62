"""The one exception type a user of adnify has to know about."""


class AdnifyError(Exception):
    """A problem with the user's input (model name, file, pattern, option).

    The command line prints its message as one line on stderr and exits non-zero,
    without a traceback (set ``ADNIFY_DEBUG=1`` to see it).
    """


class UnknownModelError(AdnifyError):
    """A name that is no timm model (callers that also accept directories add that to the message)."""
