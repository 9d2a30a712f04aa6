"""Exceptions raised for bad input.

Every check that rejects user input raises :class:`InputError` (a ``ValueError``) with a message that
names the offending value and what was expected, so the CLI can print one line and exit with code 2.
"""


class InputError(ValueError):
    """Bad input from the user: a file, a value or a prompt that cannot be used as given."""


class EngineUnavailableError(RuntimeError):
    """An engine's optional dependency is missing; the message says how to install it."""


class CancelledError(RuntimeError):
    """Long work (propagation, evaluation) was cancelled by the caller; nothing was changed."""


class UnknownTextError(InputError):
    """A text prompt that names no known structure; ``suggestions`` holds the closest known names."""

    def __init__(self, message: str, suggestions=()) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions)
