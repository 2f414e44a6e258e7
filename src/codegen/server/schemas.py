"""Request schemas of OpenAI's legacy Completions API (and the fields its chat API shares), with their
bounds, and its error shape."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


def stop_list(v: str | list[str] | None) -> list[str]:
    """OpenAI's `stop`: one string or up to 4, none empty (the Completions and chat requests')."""
    stops = [v] if isinstance(v, str) else list(v or [])
    if len(stops) > 4:
        raise ValueError("at most 4 stop sequences")
    if any(not s for s in stops):
        raise ValueError("stop sequences must be non-empty")
    return stops


class SamplingRequest(BaseModel):
    """The fields OpenAI's Completions and chat requests share, with their bounds."""

    # Copilot-style clients send fields of their own (extra, nwo, ...): accepted and ignored.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: str | None = None
    # Extensions (vLLM's names): the engine's other sampling parameters.
    top_k: int = Field(default=0, ge=0, le=51200, description="sample among the k most likely tokens; 0 = off")
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0, description="CTRL's penalty on seen tokens; 1 = off")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        return stop_list(v)

    def refuse_penalties(self) -> None:
        """APIError 400 for a non-zero presence or frequency penalty (the engine has neither)."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported by this server; leave it at 0", name)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=128)
    logit_bias: dict[str, float] | None = None
    min_tokens: int = Field(default=0, ge=0, description="tokens generated before EOS or a stop string may end")


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
