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
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mygpt.errors import MygptError
from mygpt.serve.chat_template import ChatTemplate
from mygpt.serve.engine import Engine, GenRequest, Job, QueueFull
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
        self, status: int, message: str, param: str | None = None, code: str | None = None,
        headers: dict | None = None,
    ):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def error_body(message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None,
    headers: dict | None = None,
):  # fmt: skip
    return JSONResponse(error_body(message, param, code), status_code=status, headers=headers)


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


def check_token_ids(model, ids: list[int]) -> list[int]:
    """A prompt given as token ids: each must be a token of the model's vocabulary."""
    if not ids:
        raise ApiError(400, "the prompt is empty — send at least one token id", "prompt")
    vocab = model.config.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ApiError(
            400,
            f"prompt token ids must be in 0..{vocab - 1} (the model's vocabulary), got "
            f"{', '.join(map(str, bad[:5]))}" + (" ..." if len(bad) > 5 else ""),
            "prompt",
        )
    return ids


def encode_prompt(model, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``prompt``, refusing what the model cannot read (named in the error).

    Token ids are checked against the vocabulary. A prompt rendered by the model's own chat
    template already spells its special tokens (``add_special_tokens=False``)."""
    if isinstance(prompt, list):
        return _within_context(model, check_token_ids(model, prompt))
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
    return _within_context(model, ids)


def _within_context(model, ids: list[int]) -> list[int]:
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


def gen_requests(
    info: ServerInfo, model, req, prompts: list[str | list[int]], extra_stops: list[str], *,
    logprobs: int | None = None, echo: bool = False, special: bool = True,
) -> list[GenRequest]:  # fmt: skip
    """Check a validated body against this server and model; the engine's requests, one per
    choice (``n`` for each prompt, choice j of a prompt sampled with ``seed + j``)."""
    if req.model is not None and req.model != info.model_id:
        raise ApiError(
            404, f"model {req.model!r} is not served here — use {info.model_id!r}", "model",
            "model_not_found",
        )  # fmt: skip
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    max_tokens = info.default_max_tokens if max_tokens is None else max_tokens
    if max_tokens == 0 and not echo:
        raise ApiError(
            400,
            "max_tokens 0 generates nothing — ask for at least 1, or set echo to score the prompt",
            "max_tokens",
        )
    if max_tokens > info.max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens {max_tokens} is more than this server allows ({info.max_tokens_limit}) "
            "— ask for fewer, or restart the server with a larger --max-tokens-limit",
            "max_tokens",
        )
    if req.seed is not None and req.seed < 0:
        raise ApiError(400, f"seed must be >= 0, got {req.seed}", "seed")
    encoded = [encode_prompt(model, p, special) for p in prompts]
    return [
        GenRequest(
            prompt_ids=ids,
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_k=req.top_k or None,
            top_p=req.top_p,
            seed=secrets.randbits(32) if req.seed is None else req.seed + j,
            stop=req.stop_list() + extra_stops,
            logprobs=logprobs,
            echo=echo,
        )
        for ids in encoded
        for j in range(req.n)
    ]


class Merger:
    """Every choice's events on one queue, as ``(choice index, event)``; :meth:`close` cancels
    the generations still running (a client gone, or the response done)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.left = len(jobs)
        if len(jobs) == 1:  # one choice (most requests): read its own queue, no pump task
            self.queue, self._tasks = jobs[0].events, []
            return
        self.queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._pump(i, j)) for i, j in enumerate(jobs)]

    async def _pump(self, i: int, job: Job) -> None:
        while True:
            event = await job.events.get()
            self.queue.put_nowait((i, event))
            if event[0] != "text":
                return

    async def get(self, timeout: float | None = None) -> tuple[int, tuple] | None:
        """The next event; None on a timeout or when every choice has ended."""
        if not self.left:
            return None
        try:
            got = await asyncio.wait_for(self.queue.get(), timeout=timeout)
        except asyncio.TimeoutError:
            return None
        i, event = (0, got) if not self._tasks else got
        self.left -= event[0] != "text"
        return i, event

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for job in self.jobs:
            job.cancel()  # a no-op once the job has ended


@dataclass
class Choice:
    parts: list = field(default_factory=list)
    entries: list = field(default_factory=list)
    reason: str | None = None
    tokens: int = 0
    offset: int = 0  # text_offset of the next logprobs entry (streaming)


async def collect(jobs: list[Job], request: Request) -> list[Choice]:
    """Every choice's text, logprobs and finish reason; stops generating if the client leaves."""
    choices = [Choice() for _ in jobs]
    merger = Merger(jobs)
    checked = time.monotonic()
    try:
        while merger.left:
            got = await merger.get(timeout=0.25)
            # tokens may arrive faster than any timeout: look for a hang-up on a clock instead
            if time.monotonic() - checked > 0.25:
                checked = time.monotonic()
                if await request.is_disconnected():
                    raise ApiError(499, "client closed the request")
            if got is None:
                continue
            i, event = got
            if event[0] == "text":
                choices[i].parts.append(event[1])
                choices[i].entries.extend(event[2] if len(event) > 2 else [])
            elif event[0] == "error":
                raise ApiError(400, event[1])
            else:
                choices[i].reason, choices[i].tokens = event[1], event[2]
        return choices
    finally:
        merger.close()


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def completion_logprobs(entries: list[dict], offset: int) -> dict:
    """OpenAI's legacy completions ``logprobs`` object for ``entries`` starting at ``offset``."""
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        tokens.append(e["token"])
        lps.append(e.get("logprob"))
        tops.append(e.get("top"))
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(entries: list[dict]) -> dict:
    """The chat format's ``logprobs``: ``{"content": [token, logprob, bytes, top_logprobs]}``."""

    def one(token: str, lp: float) -> dict:
        return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}

    content = [
        {**one(e["token"], e["logprob"]),
         "top_logprobs": [one(t, v) for t, v in (e.get("top") or {}).items()]}
        for e in entries
    ]  # fmt: skip
    return {"content": content}


class Formatter:
    """Response and chunk bodies for one request, completions or chat."""

    def __init__(self, chat: bool, model_id: str, logprobs: bool = False) -> None:
        self.chat = chat
        self.logprobs = logprobs
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.base = {"id": self.id, "created": int(time.time()), "model": model_id}

    def _lp(self, entries: list[dict], offset: int) -> dict | None:
        if not self.logprobs:
            return None
        return chat_logprobs(entries) if self.chat else completion_logprobs(entries, offset)

    def full(self, choices: list[Choice], use: dict) -> dict:
        out = []
        for i, c in enumerate(choices):
            text, lp = "".join(c.parts), self._lp(c.entries, 0)
            if self.chat:
                msg = {"role": "assistant", "content": text}
                out.append({"index": i, "message": msg, "logprobs": lp, "finish_reason": c.reason})
            else:
                out.append({"index": i, "text": text, "logprobs": lp, "finish_reason": c.reason})
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self.base, "object": kind, "choices": out, "usage": use}

    def chunk(
        self, i: int, text: str | None, reason: str | None = None, first: bool = False,
        entries: list | None = None, choice: Choice | None = None,
    ) -> dict:  # fmt: skip
        lp = None
        if entries and choice is not None:
            lp = self._lp(entries, choice.offset)
            choice.offset += sum(len(e["token"]) for e in entries)
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice_body = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}
            return {**self.base, "object": "chat.completion.chunk", "choices": [choice_body]}
        choice_body = {"index": i, "text": text or "", "logprobs": lp, "finish_reason": reason}
        return {**self.base, "object": "text_completion", "choices": [choice_body]}

    def usage_chunk(self, use: dict) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self.base, "object": kind, "choices": [], "usage": use}


async def stream_body(jobs: list[Job], fmt: Formatter, prompt_tokens: int, include_usage: bool):
    """Server-sent events in OpenAI's order: chunks, a finish chunk per choice, usage, ``[DONE]``."""
    if fmt.chat:
        for i in range(len(jobs)):
            yield json.dumps(fmt.chunk(i, None, first=True))
    merger, choices, completion = Merger(jobs), [Choice() for _ in jobs], 0
    try:
        while (got := await merger.get()) is not None:
            i, event = got
            if event[0] == "text":
                entries = event[2] if len(event) > 2 else []
                yield json.dumps(fmt.chunk(i, event[1], entries=entries, choice=choices[i]))
            elif event[0] == "error":
                yield json.dumps(error_body(event[1]))
                return
            else:
                completion += event[2]
                yield json.dumps(fmt.chunk(i, None if fmt.chat else "", reason=event[1]))
    finally:
        merger.close()
    if include_usage:
        yield json.dumps(fmt.usage_chunk(usage(prompt_tokens, completion)))
    yield "[DONE]"


def create_app(engine: Engine, info: ServerInfo) -> FastAPI:
    app = FastAPI(title="mygpt", docs_url=None, redoc_url=None, openapi_url=None)
    template = info.template or ChatTemplate()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, f"{request.method} {request.url.path}: {e.detail}")

    async def respond(request: Request, req, gens: list[GenRequest], chat: bool):
        fmt = Formatter(chat, info.model_id, logprobs=gens[0].logprobs is not None)
        try:
            jobs = engine.submit_all(gens)
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full", headers={"Retry-After": "1"}) from None
        n_prompt = sum(len(g.prompt_ids) for g in gens[:: req.n])  # each prompt counted once
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            body = stream_body(jobs, fmt, n_prompt, include)
            return EventSourceResponse(body, sep="\n", ping=15)
        choices = await collect(jobs, request)
        return fmt.full(choices, usage(n_prompt, sum(c.tokens for c in choices)))

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse_body(request, CompletionRequest)
        gens = gen_requests(
            info, engine.model, req, req.prompts(), [], logprobs=req.logprobs, echo=req.echo
        )
        return await respond(request, req, gens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse_body(request, ChatRequest)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        try:
            prompt = template.prompt([(m.role, m.content) for m in req.messages])
        except MygptError as e:  # the model's own template refused them (raise_exception)
            raise ApiError(400, str(e), "messages") from None
        special = getattr(template, "add_special_tokens", True)
        k = (req.top_logprobs or 0) if req.logprobs else None
        gens = gen_requests(
            info, engine.model, req, [prompt], template.stops(), logprobs=k, special=special
        )
        return await respond(request, req, gens, chat=True)

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
            "scheduler": engine.mode,
            "scheduler_reason": engine.mode_reason,
            "max_concurrent": engine.max_active,
            "max_queue": engine.max_queue,
            "kv_cache_bytes": engine.kv_bytes,
            **engine.load_state(),
        }

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return resources.files("mygpt.serve").joinpath("chat.html").read_text(encoding="utf-8")

    return app
