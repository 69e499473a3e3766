"""OpenAI-compatible HTTP server with a batching worker and a small web page."""

from aligngpt.inference.server.app import ChatService, ServerConfig, create_app

__all__ = ["ChatService", "ServerConfig", "create_app"]
