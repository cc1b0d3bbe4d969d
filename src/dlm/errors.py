"""The one exception type users see: a message that says what went wrong and what to do.

The command line prints it without a traceback and exits non-zero. Every layer may raise it
(it sits below all of them); nothing catches it but the edges (CLI, server).
"""


class DlmError(Exception):
    """A problem with the user's input or files, not a bug in dlm. `param` names the request
    field or knob at fault, when there is one (the server reports it as OpenAI's `param`)."""

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.param = param
