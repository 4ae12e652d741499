"""The HTTP side of ``mygpt serve``: OpenAI-style routes on FastAPI, streaming as server-sent events.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream``),
``GET /v1/models``, ``GET /health`` and the chat page at ``/``. Every bad request is answered with
OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, and a 4xx status; the
request handlers run on the event loop and never touch the model, which lives on the engine's
worker thread (:mod:`mygpt.serve.engine`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mygpt.errors import MygptError
from mygpt.serve.chat_template import ChatTemplate
from mygpt.serve.engine import Engine, GenRequest, Job
from mygpt.serve.schemas import ChatRequest, CompletionRequest, ValidationError, first_error


@dataclass
class ServerInfo:
    model_id: str
    max_tokens_limit: int = 2048
    default_max_tokens: int = 128
    template: ChatTemplate | None = None
    created: int = 0


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, param: str | None = None, code: str | None = None):
    return JSONResponse(error_body(message, param, code), status_code=status)


async def parse_body(request: Request, schema):
    """The validated request body, or an :class:`ApiError` saying what is wrong with it."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON body ({e}) — send one JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(data).__name__}")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as e:
        message, param = first_error(e)
        raise ApiError(400, message, param) from None


def encode_prompt(model, prompt: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``prompt``, refusing what the model cannot read (named in the error).

    A prompt rendered by the model's own chat template already spells its special tokens
    (``add_special_tokens=False``)."""
    tok = model.tokenizer
    alphabet = getattr(tok, "chars", None)
    if alphabet is not None and tok.kind in ("char", "bpe"):
        missing = sorted(set(prompt) - set(alphabet))
        if missing:
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise ApiError(
                400,
                f"the prompt has characters the {tok.kind} tokenizer lacks: {shown}{more} — "
                "remove or replace them",
                "prompt",
                "unknown_characters",
            )
    try:
        ids = model.encode(prompt) if add_special_tokens else model.encode(prompt, False)
    except MygptError as e:
        raise ApiError(400, str(e), "prompt") from None
    if not ids:
        raise ApiError(400, "the prompt is empty — send at least one character", "prompt")
    limit = model.config.max_seq_len
    if len(ids) > limit:
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens, longer than the model's context of {limit} — "
            "shorten it",
            "prompt",
            "context_length_exceeded",
        )
    return ids


def gen_request(
    info: ServerInfo, model, req, prompt: str, extra_stops: list[str], special: bool = True
) -> GenRequest:
    """Check a validated body against this server and model; the engine's request."""
    if req.model is not None and req.model != info.model_id:
        raise ApiError(
            404, f"model {req.model!r} is not served here — use {info.model_id!r}", "model",
            "model_not_found",
        )  # fmt: skip
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    max_tokens = info.default_max_tokens if max_tokens is None else max_tokens
    if max_tokens > info.max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens {max_tokens} is more than this server allows ({info.max_tokens_limit}) "
            "— ask for fewer, or restart the server with a larger --max-tokens-limit",
            "max_tokens",
        )
    if req.seed is not None and req.seed < 0:
        raise ApiError(400, f"seed must be >= 0, got {req.seed}", "seed")
    return GenRequest(
        prompt_ids=encode_prompt(model, prompt, special),
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_k=req.top_k or None,
        top_p=req.top_p,
        seed=secrets.randbits(32) if req.seed is None else req.seed,
        stop=req.stop_list() + extra_stops,
    )


async def job_events(job: Job) -> AsyncIterator[tuple]:
    """The job's events up to its end; leaving early (a client gone) cancels the generation."""
    try:
        while True:
            event = await job.events.get()
            yield event
            if event[0] != "text":
                return
    finally:
        job.cancel()  # a no-op once the job has ended


async def collect(job: Job, request: Request) -> tuple[str, str, int]:
    """``(text, finish_reason, completion_tokens)``; stops generating if the client leaves."""
    parts: list[str] = []
    checked = time.monotonic()
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                event = None
            # tokens may arrive faster than any timeout: look for a hang-up on a clock instead
            if time.monotonic() - checked > 0.25:
                checked = time.monotonic()
                if await request.is_disconnected():
                    raise ApiError(499, "client closed the request")
            if event is None:
                continue
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "error":
                raise ApiError(400, event[1])
            else:
                return "".join(parts), event[1], event[2]
    finally:
        job.cancel()


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


class Formatter:
    """Response and chunk bodies for one request, completions or chat."""

    def __init__(self, chat: bool, model_id: str) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.base = {"id": self.id, "created": int(time.time()), "model": model_id}

    def full(self, text: str, reason: str, use: dict) -> dict:
        if self.chat:
            msg = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": msg, "logprobs": None, "finish_reason": reason}
            return {**self.base, "object": "chat.completion", "choices": [choice], "usage": use}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {**self.base, "object": "text_completion", "choices": [choice], "usage": use}

    def chunk(self, text: str | None, reason: str | None = None, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return {**self.base, "object": "chat.completion.chunk", "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        return {**self.base, "object": "text_completion", "choices": [choice]}

    def usage_chunk(self, use: dict) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self.base, "object": kind, "choices": [], "usage": use}


async def stream_body(job: Job, fmt: Formatter, prompt_tokens: int, include_usage: bool):
    """Server-sent events in OpenAI's order: chunks, a finish chunk, usage, ``[DONE]``."""
    if fmt.chat:
        yield json.dumps(fmt.chunk(None, first=True))
    async for event in job_events(job):
        if event[0] == "text":
            yield json.dumps(fmt.chunk(event[1]))
        elif event[0] == "error":
            yield json.dumps(error_body(event[1]))
            return
        else:
            yield json.dumps(fmt.chunk(None if fmt.chat else "", reason=event[1]))
            if include_usage:
                yield json.dumps(fmt.usage_chunk(usage(prompt_tokens, event[2])))
    yield "[DONE]"


def create_app(engine: Engine, info: ServerInfo) -> FastAPI:
    app = FastAPI(title="mygpt", docs_url=None, redoc_url=None, openapi_url=None)
    template = info.template or ChatTemplate()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error(e.status, e.message, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, f"{request.method} {request.url.path}: {e.detail}")

    async def respond(request: Request, req, gen: GenRequest, chat: bool):
        fmt = Formatter(chat, info.model_id)
        job = engine.submit(gen)
        n_prompt = len(gen.prompt_ids)
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            body = stream_body(job, fmt, n_prompt, include)
            return EventSourceResponse(body, sep="\n", ping=15)
        text, reason, n = await collect(job, request)
        return fmt.full(text, reason, usage(n_prompt, n))

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse_body(request, CompletionRequest)
        gen = gen_request(info, engine.model, req, req.prompt_text(), [])
        return await respond(request, req, gen, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse_body(request, ChatRequest)
        try:
            prompt = template.prompt([(m.role, m.content) for m in req.messages])
        except MygptError as e:  # the model's own template refused them (raise_exception)
            raise ApiError(400, str(e), "messages") from None
        special = getattr(template, "add_special_tokens", True)
        gen = gen_request(info, engine.model, req, prompt, template.stops(), special)
        return await respond(request, req, gen, chat=True)

    @app.get("/v1/models")
    async def models():
        card = {"id": info.model_id, "object": "model", "created": info.created}
        return {"object": "list", "data": [{**card, "owned_by": "mygpt"}]}

    @app.get("/health")
    async def health():
        m = engine.model
        return {
            "status": "ok",
            "model": info.model_id,
            "backend": m.ops.name,
            "context": m.config.max_seq_len,
            "tokenizer": m.tokenizer.kind,
            "chat_template": template.template,
            **engine.load_state(),
        }

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return resources.files("mygpt.serve").joinpath("chat.html").read_text(encoding="utf-8")

    return app
