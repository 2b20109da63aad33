"""Server API: the transport-agnostic executor and its HTTP binding."""

from app.api.executor import ApiDecodeError, ApiExecutor

__all__ = ["ApiDecodeError", "ApiExecutor"]
