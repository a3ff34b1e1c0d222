"""The one error type the package raises for bad input; the CLI turns it into a one-line message."""


class CausalSpritesError(Exception):
    """Bad input or a failed check: the message names the problem in one line."""
