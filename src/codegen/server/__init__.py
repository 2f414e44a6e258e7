"""`codegen serve`: an OpenAI-compatible (legacy Completions) and Copilot-compatible HTTP server.

Needs the `server` extra (FastAPI, uvicorn). The app only calls the generation API
(`codegen.engine.batcher.ContinuousBatcher`); it never touches the model directly.
"""

from .settings import ServerSettings

__all__ = ["ServerSettings"]
