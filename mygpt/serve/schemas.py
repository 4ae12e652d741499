"""Request bodies of the OpenAI API subset ``mygpt serve`` speaks, validated by pydantic.

Exact or refused: fields are strictly typed (``"5"`` is not a number), unknown fields are an
error, and OpenAI fields this server cannot honour (penalties, ``logit_bias``, ``best_of``, ...)
are accepted only at their neutral value, so a client never gets output that silently ignored what it
asked for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["ChatRequest", "CompletionRequest", "ValidationError", "first_error"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="extension: 0 = off")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16, description="choices per prompt")
    # OpenAI fields with one supported value
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0:
            raise ValueError("penalties are not supported by this server: only 0")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict | None) -> dict | None:
        if v:
            raise ValueError("logit_bias is not supported by this server")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


Prompt = str | list[int] | list[str] | list[list[int]]


class CompletionRequest(_Sampling):
    prompt: Prompt
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=None, ge=0)  # 0 with echo: score the prompt only
    best_of: Literal[1] = 1
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, v: Prompt) -> Prompt:
        if isinstance(v, list) and not v:
            raise ValueError(
                "the prompt list is empty: send a string, token ids, or a list of them"
            )
        if isinstance(v, list) and len(v) > 64 and not isinstance(v[0], int):
            raise ValueError("at most 64 prompts per request")
        return v

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


def first_error(e: ValidationError) -> tuple[str, str | None]:
    """``(one-line message, param)`` for the first thing pydantic rejected."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    param = loc or None
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown field '{loc}' — remove it (see GET /v1/models and docs/serving.md)", param
    if kind == "missing":
        return f"missing required field '{loc}'", param
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 60 else type(got)
    return f"invalid '{loc}': {err['msg']} (got {shown})", param
