"""`dlm serve`: an HTTP server for a checkpoint (OpenAI-style completions, infilling, streaming of
every denoising step, a web page). FastAPI and uvicorn are the optional extra `dlm[server]`:
`dlm.server.app` and `dlm.server.listen` import them, this package's other modules do not
(`access` is plain ASGI, `replies` plain functions)."""

from dlm.server.engine import Engine, Job, QueueFull, Row, Settings
from dlm.server.metrics import Metrics

__all__ = ["Engine", "Job", "Metrics", "QueueFull", "Row", "Settings", "create_app"]


def create_app(*args, **kwargs):
    """`dlm.server.app.create_app`, imported on first use (it needs the [server] extra)."""
    from dlm.server.app import create_app as create

    return create(*args, **kwargs)
