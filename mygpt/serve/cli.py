"""``mygpt serve --checkpoint X``: load the model, bind the port, run uvicorn until Ctrl-C."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import click

from mygpt.errors import MygptError, UsageError
from mygpt.settings import backend_option, device_option, precision_option


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``--port 0`` picks a free one); refused ports are one-line errors."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MygptError(
            f"cannot listen on {host}:{port} ({e.strerror}) — pick another --port or --host"
        ) from None
    sock.listen(128)  # clients queue from now on, even while the model loads
    return sock


def _model_id(checkpoint: str) -> str:
    """What clients call the model: a file's stem, a directory's name, or the Hub id itself."""
    path = Path(checkpoint)
    if path.is_file():
        return path.stem
    return path.name if path.exists() else checkpoint


@click.command(name="serve")
@click.option(
    "--checkpoint",
    required=True,
    help="A .safetensors or book .ckpt checkpoint, a Hugging Face model directory, or a Hub id "
    "(e.g. Qwen/Qwen2.5-0.5B-Instruct).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True, help="0 = any free port.")
@click.option("--model-name", default=None, help="The model id clients see (default: file stem).")
@click.option(
    "--chat-template",
    default=None,
    help="How chat messages become a prompt: model (the model's own Jinja template; the default "
    "where it has one), transcript ('User: ...\\nAssistant:', the default otherwise), plain "
    "(the messages' text), or a template with {content} and {role}/{Role}.",
)
@click.option("--max-tokens-limit", type=int, default=2048, show_default=True)
@click.option(
    "--default-max-tokens",
    type=int,
    default=128,
    show_default=True,
    help="When a request has none.",
)
@click.option(
    "--max-concurrent",
    type=int,
    default=16,
    show_default=True,
    help="Requests decoding at once (rows of the batch, KV memory planned up front); the rest "
    "wait in order.",
)
@click.option(
    "--max-queue",
    type=int,
    default=256,
    show_default=True,
    help="Requests that may wait beyond --max-concurrent; more are answered 429 + Retry-After.",
)
@click.option(
    "--scheduler",
    type=click.Choice(["auto", "batched", "round-robin"]),
    default="auto",
    show_default=True,
    help="auto: batched decoding where a start-up check finds it bit-exact, else round-robin "
    "(one request per forward pass, exact by construction).",
)
@backend_option
@device_option
@precision_option
def serve(
    checkpoint: str, host: str, port: int, model_name: str | None, chat_template: str | None,
    max_tokens_limit: int, default_max_tokens: int, max_concurrent: int, max_queue: int,
    scheduler: str, backend: str, device: str, precision: str,
) -> None:  # fmt: skip
    """Serve a checkpoint over the OpenAI API (completions, chat, streaming) with a chat page."""
    import uvicorn

    from mygpt.api import load
    from mygpt.serve.app import ServerInfo, create_app
    from mygpt.serve.chat_template import ChatTemplate, template_for
    from mygpt.serve.engine import Engine

    for name, value in (("--max-tokens-limit", max_tokens_limit),
                        ("--default-max-tokens", default_max_tokens),
                        ("--max-concurrent", max_concurrent)):  # fmt: skip
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if max_queue < 0:
        raise UsageError(f"--max-queue must be at least 0 (0: none wait), got {max_queue}")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    if chat_template not in (None, "model", "auto"):
        ChatTemplate(chat_template)  # a bad template fails before the model loads
    from mygpt.interop.hub import resolve_source

    resolve_source(checkpoint)  # a Hub id downloads (or fails) before the port is taken
    sock = bind(host, port)
    engine = Engine(
        lambda: load(checkpoint, backend=backend, device=device, precision=precision),
        max_active=max_concurrent,
        max_queue=max_queue,
        scheduler=scheduler,
    )
    engine.start()
    m = engine.model
    template = template_for(chat_template, m.tokenizer)
    info = ServerInfo(
        model_id=model_name or _model_id(checkpoint),
        max_tokens_limit=max_tokens_limit,
        default_max_tokens=min(default_max_tokens, max_tokens_limit),
        template=template,
        created=int(time.time()),
    )
    click.echo(
        f"scheduler {engine.mode} ({engine.mode_reason}) · up to {max_concurrent} requests at "
        f"once, {max_queue} waiting · KV cache {engine.kv_bytes / 2**20:.1f} MiB planned",
        err=True,
    )
    bound_host, bound_port = sock.getsockname()[:2]
    click.echo(
        f"{m.ops.describe()} · {m.dtype} · {m.config.vocab_size}-token {m.tokenizer.kind} "
        f"tokenizer · context {m.config.max_seq_len} · chat template {template.name}",
        err=True,
    )
    click.echo(
        f"serving {info.model_id} on http://{bound_host}:{bound_port} (chat page at /, "
        "OpenAI API at /v1) — Ctrl-C stops",
        err=True,
    )
    config = uvicorn.Config(create_app(engine, info), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
