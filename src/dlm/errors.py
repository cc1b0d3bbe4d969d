"""The one exception type users see: a message that says what went wrong and what to do.

The command line prints it without a traceback and exits non-zero. Every layer may raise it
(it sits below all of them); nothing catches it but the edges (CLI, server).
"""


class DlmError(Exception):
    """A problem with the user's input or files, not a bug in dlm."""
