"""``mygpt serve`` end to end: the official openai client against a real server process.

One server (the book's Part-I checkpoint, torch on CPU) is started for the module on a free port
of 127.0.0.1 and stopped at the end. Expected texts come from ``mygpt generate`` / the Python API,
so "greedy equals generate" is checked against the command users already trust.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

import mygpt
from mygpt.cli import main
from tests.conftest import BOOK_FIXTURES
from tests.serving import running_server

openai = pytest.importorskip("openai")

CKPT = BOOK_FIXTURES / "part1_ch18.ckpt"  # char tokenizer, learned positions, context 64
MODEL_ID = "part1_ch18"
LIMIT = 600


@pytest.fixture(scope="module")
def server():
    with running_server(CKPT, "--max-tokens-limit", str(LIMIT)) as url:
        yield url


@pytest.fixture(scope="module")
def local():
    return mygpt.load(CKPT, backend="torch", device="cpu")


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def generate_cli(capsys, prompt: str, n: int, *extra: str) -> str:
    """The continuation ``mygpt generate`` prints for ``prompt`` (its stdout minus the prompt)."""
    capsys.readouterr()
    args = ["generate", "--checkpoint", str(CKPT), "--prompt", prompt, "--max-new-tokens", str(n)]
    assert main([*args, "--backend", "torch", "--device", "cpu", *extra]) == 0
    out = capsys.readouterr().out
    assert out.startswith(prompt) and out.endswith("\n")
    return out[len(prompt) : -1]


def greedy(local, prompt: str, n: int) -> str:
    return local.decode(list(local.stream(prompt, n, temperature=0)))


def test_completion_greedy_equals_mygpt_generate(server, capsys):
    c = client(server)
    r = c.completions.create(model=MODEL_ID, prompt="ROMEO:", max_tokens=80, temperature=0)
    assert r.choices[0].text == generate_cli(capsys, "ROMEO:", 80, "--temperature", "0")
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 80, 86)


def test_sampling_with_a_seed_equals_mygpt_generate(server, capsys):
    r = client(server).completions.create(
        model=MODEL_ID, prompt="JULIET:", max_tokens=50, temperature=0.8, top_p=0.9, seed=7,
        extra_body={"top_k": 10},
    )  # fmt: skip
    want = generate_cli(
        capsys, "JULIET:", 50, "--temperature", "0.8", "--top-p", "0.9", "--seed", "7"
    )  # --top-k defaults to 10
    assert r.choices[0].text == want


def test_streamed_completion_chunks_add_up_to_the_greedy_text(server, local):
    chunks = list(
        client(server).completions.create(
            model=MODEL_ID, prompt="First Citizen:", max_tokens=40, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    texts = [ch.choices[0].text for ch in chunks if ch.choices]
    assert len(texts) > 10  # token by token, not one blob
    assert "".join(texts) == greedy(local, "First Citizen:", 40)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 40


def test_chat_completion_uses_the_transcript_template(server, local):
    c = client(server)
    msgs = [{"role": "system", "content": "A play."}, {"role": "user", "content": "Good morrow"}]
    r = c.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=60, temperature=0)
    prompt = "System: A play.\nUser: Good morrow\nAssistant:"
    want = greedy(local, prompt, 60).split("\nUser:")[0]  # the template's stop sequence
    assert r.choices[0].message.content == want
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(prompt)
    stream = c.chat.completions.create(
        model=MODEL_ID, messages=msgs, max_tokens=60, temperature=0, stream=True
    )
    deltas = [ch.choices[0].delta for ch in stream]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == want


def test_stop_sequences_cut_the_completion(server, local):
    full = greedy(local, "ROMEO:", 60)
    stop = full[20:23]
    r = client(server).completions.create(
        model=MODEL_ID, prompt="ROMEO:", max_tokens=60, temperature=0, stop=[stop]
    )
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    h = httpx.get(server + "/health").json()
    assert h["status"] == "ok" and h["context"] == 64 and h["tokenizer"] == "char"


def test_eight_concurrent_streams_all_complete_with_the_right_tokens(server, local):
    prompts = ["ROMEO:", "JULIET:", "KING:", "First Citizen:", "MENENIUS:", "All:", "O", "Ay,"]
    n = 40
    results: dict[str, str] = {}

    def one(prompt: str) -> None:
        stream = client(server).completions.create(
            model=MODEL_ID, prompt=prompt, max_tokens=n, temperature=0, stream=True
        )
        results[prompt] = "".join(ch.choices[0].text for ch in stream if ch.choices)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == sorted(prompts)
    for p in prompts:
        assert results[p] == greedy(local, p, n), p


BAD = [
    (b'{"prompt": "ROMEO:", "max_tokens": 5', 400, "malformed JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"prompt": "ROMEO:", "max_tokens": "5"}', 400, "max_tokens"),
    (b'{"prompt": "ROMEO:", "temperature": "hot"}', 400, "temperature"),
    (b'{"prompt": "ROMEO:", "colour": 3}', 400, "unknown field 'colour'"),
    (b'{"max_tokens": 5}', 400, "prompt"),
    (json.dumps({"prompt": "ROMEO:", "max_tokens": LIMIT + 1}).encode(), 400, "allows (600)"),
    ('{"prompt": "caf\u00e9 \u20ac"}'.encode(), 400, "'\u00e9' (U+00E9), '\u20ac' (U+20AC)"),
    (json.dumps({"prompt": "a" * 65}).encode(), 400, "context of 64"),
    (b'{"prompt": "ROMEO:", "temperature": -0.5}', 400, "temperature"),
    (b'{"prompt": "ROMEO:", "top_p": 0}', 400, "top_p"),
    (b'{"prompt": "ROMEO:", "n": 0}', 400, "'n'"),
    (b'{"prompt": ""}', 400, "empty"),
    (b'{"prompt": "ROMEO:", "model": "gpt-4"}', 404, "not served here"),
]


def test_bad_requests_get_4xx_json_while_a_good_stream_completes(server, local):
    good: dict = {}

    def stream_good() -> None:
        body = {"prompt": "ROMEO:", "max_tokens": 400, "temperature": 0, "stream": True}
        text, usage_seen = [], False
        with httpx.stream("POST", server + "/v1/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    text.append(chunk["choices"][0]["text"])
                    usage_seen |= chunk["choices"][0]["finish_reason"] == "length"
        good["text"], good["finished"] = "".join(text), usage_seen

    t = threading.Thread(target=stream_good)
    t.start()
    url = server + "/v1/completions"
    for body, status, words in BAD:
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["error"]["message"], (body, r.json())
    r = httpx.post(
        server + "/v1/chat/completions", json={"messages": [{"role": "bot", "content": "x"}]}
    )
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]
    assert httpx.get(server + "/v1/nothing").status_code == 404
    assert httpx.get(url).status_code == 405
    before = httpx.get(server + "/health").json()["cancelled"]
    # a client that goes away mid-stream: its generation stops (counted as cancelled, not done)
    body = {"prompt": "KING:", "max_tokens": LIMIT, "temperature": 0, "stream": True}
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
    # and one that gives up waiting for a non-streamed answer
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={**body, "stream": False}, timeout=0.5)
    for _ in range(100):
        if httpx.get(server + "/health").json()["cancelled"] >= before + 2:
            break
        time.sleep(0.1)
    assert httpx.get(server + "/health").json()["cancelled"] == before + 2
    t.join(timeout=120)
    assert good["finished"] and good["text"] == greedy(local, "ROMEO:", 400)


def test_serve_startup_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "none.safetensors"), "--port", "0"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(CKPT), "--chat-template", "no placeholder"]) == 2
    assert "{content}" in capsys.readouterr().err
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        assert main(["serve", "--checkpoint", str(CKPT), "--port", port]) == 1
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
