"""User-facing errors: one line that says what is wrong and what to do."""


class EdgeInferError(Exception):
    """An error the CLI prints as a single line (no traceback) and exits non-zero.

    The message must name what is wrong and, where possible, what to do about it.
    """

    exit_code = 2


class NotSupportedYet(EdgeInferError):
    """A feature that is planned but not built: raised instead of faking a result."""
