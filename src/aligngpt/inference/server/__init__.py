"""OpenAI-compatible HTTP server with a batching worker and a small web page."""

from aligngpt.inference.server.app import create_app
from aligngpt.inference.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
