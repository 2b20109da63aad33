"""Server API: the transport-agnostic executor and its HTTP binding."""

from app.api.errors import ApiDecodeError
from app.api.executor import ApiExecutor

__all__ = ["ApiDecodeError", "ApiExecutor"]
