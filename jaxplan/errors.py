"""The one error class for bad input (``specs`` re-exports it): a module of its own so that both
``specs`` and ``traffic`` (which ``specs`` reads an experiment's ``traffic:`` key with) raise it."""


class SpecError(ValueError):
    """A bad input file or value. The message names the file, the key and what is allowed."""
