"""Batched serving is exact: every stream equals ``mygpt generate`` alone, whatever else runs.

The engine tests run the real Part-I model in process (torch on CPU, no HTTP); the API tests
use the official ``openai`` client against a real server for logprobs, echo, token-id prompts,
several prompts and choices, 429 on a full queue.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import numpy as np
import pytest

import mygpt
from mygpt.eval import evaluate_tokens
from mygpt.generate import log_softmax
from mygpt.serve import engine as engine_mod
from mygpt.serve.engine import Engine, GenRequest, QueueFull
from tests.conftest import BOOK_FIXTURES
from tests.serving import running_server

CKPT = BOOK_FIXTURES / "part1_ch18.ckpt"  # char tokenizer, learned positions, context 64


@pytest.fixture(scope="module")
def local():
    return mygpt.load(CKPT, backend="torch", device="cpu")


def solo(m, req: GenRequest) -> tuple[list[int], list[float]]:
    """What ``mygpt generate`` gives alone: token ids and each one's logprob."""
    ids, lps = [], []
    steps = m.steps(req.prompt_ids, req.max_tokens, temperature=req.temperature,
                    top_k=req.top_k, top_p=req.top_p, seed=req.seed)  # fmt: skip
    for token, logits in steps:
        ids.append(token)
        lps.append(float(log_softmax(logits)[token]))
    return ids, lps


async def drain(job) -> tuple[list[int], list[float], tuple]:
    ids, lps = [], []
    while True:
        ev = await asyncio.wait_for(job.events.get(), timeout=60)
        if ev[0] != "text":
            return ids, lps, ev
        ids += [e["id"] for e in ev[2]]
        lps += [e["logprob"] for e in ev[2]]


def random_requests(m, n: int, seed: int) -> list[GenRequest]:
    rng = random.Random(seed)
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak."
    reqs = []
    for i in range(n):
        start = rng.randrange(len(text) - 2)
        prompt = m.encode(text[start : start + rng.randint(1, 40)])
        greedy = i % 3 == 0
        reqs.append(GenRequest(
            prompt, max_tokens=rng.randint(1, 40), temperature=0.0 if greedy else rng.choice([0.7, 1.0, 1.3]),
            top_k=rng.choice([None, 5, 20]), top_p=rng.choice([1.0, 0.9]), seed=rng.randrange(1000),
            logprobs=0,
        ))  # fmt: skip
    return reqs


def test_sixteen_random_requests_each_equal_solo_generate(local):
    """Random arrival times, prompt lengths (some reaching past the context: refills), lengths
    and sampling settings, more requests than rows; plus one cancelled mid-batch."""
    engine = Engine(lambda: local, max_active=8)
    engine.start()
    assert engine.mode == "batched", engine.mode_reason
    reqs = random_requests(local, 18, seed=1)
    reqs[5].prompt_ids = local.encode("ROMEO:\n" * 8)[:60]  # 60 + up to 40 tokens: past 64
    reqs[5].max_tokens = 30
    delays = np.random.default_rng(2).uniform(0, 0.05, len(reqs))

    async def one(req: GenRequest, delay: float):
        await asyncio.sleep(delay)
        return await drain(engine.submit(req))

    async def cancelled():
        job = engine.submit(GenRequest(local.encode("KING:"), max_tokens=500, temperature=0))
        await asyncio.sleep(0.02)
        while job.count < 3:
            await asyncio.sleep(0.005)
        job.cancel()
        return job

    async def go():
        return await asyncio.gather(cancelled(), *(one(r, d) for r, d in zip(reqs, delays)))

    job, *results = asyncio.run(go())
    for req, (ids, lps, end) in zip(reqs, results):
        want_ids, want_lps = solo(local, req)
        assert end == ("end", "length", req.max_tokens)
        assert ids == want_ids and lps == want_lps  # bit for bit, logprobs included
    state = engine.load_state()
    assert state["cancelled"] == 1 and state["active"] == 0 and job.count < 500
    assert all(s is None for s in engine.decoder.streams)  # every row freed
    # batched: far fewer forward steps than tokens generated
    assert state["steps"] < state["tokens"] / 2


def test_falls_back_to_round_robin_where_batching_is_not_exact(local, monkeypatch):
    monkeypatch.setattr(engine_mod, "batch_invariance_check", lambda *a, **k: 3e-6)
    engine = Engine(lambda: local, max_active=4)
    engine.start()
    assert engine.mode == "round-robin" and "3.0e-06" in engine.mode_reason
    reqs = random_requests(local, 4, seed=3)

    async def go():
        return await asyncio.gather(*(drain(j) for j in engine.submit_all(reqs)))

    for req, (ids, lps, _) in zip(reqs, asyncio.run(go())):
        assert (ids, lps) == solo(local, req)


def test_a_full_queue_refuses_all_choices_of_a_request(local):
    engine = Engine(lambda: local, max_active=1, max_queue=2)
    engine.start()

    async def go():
        with engine._wake:  # hold the worker: nothing leaves the queue
            engine.submit_all([GenRequest([1], max_tokens=1)] * 3)  # 1 row free + 2 waiting
            with pytest.raises(QueueFull, match="max-queue 2"):
                engine.submit_all([GenRequest([1], max_tokens=1)])
        await asyncio.sleep(0.5)

    asyncio.run(go())
    assert engine.load_state()["completed"] == 3


# --- the API, through the official openai client ---------------------------------------------

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server():
    with running_server(CKPT, "--max-concurrent", "8", "--max-queue", "4") as url:
        yield url


def client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_health_reports_the_scheduler_and_planned_memory(server, local):
    h = httpx.get(server + "/health").json()
    assert h["scheduler"] == "batched" and "bit for bit" in h["scheduler_reason"]
    cfg = local.config  # 8 rows + a prefill's cache (2 x the context), K and V, fp32
    row = 2 * cfg.num_layers * cfg.max_seq_len * cfg.num_kv_heads * cfg.head_dim * 4
    assert h["kv_cache_bytes"] == (8 + 2) * row and h["max_queue"] == 4


def test_logprobs_echo_and_token_id_prompts(server, local):
    c = client(server)
    ids = local.encode("ROMEO:")
    r = c.completions.create(model="part1_ch18", prompt=ids, max_tokens=8, temperature=0,
                             logprobs=3, echo=True)  # fmt: skip
    want_ids, want_lps = solo(local, GenRequest(ids, max_tokens=8, temperature=0))
    ch = r.choices[0]
    assert ch.text == "ROMEO:" + local.decode(want_ids)
    lp = ch.logprobs
    assert lp.tokens == [local.decode([t]) for t in ids + want_ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[len(ids) :] == want_lps
    assert lp.text_offset == list(range(len(ids) + 8))  # one character per token
    for tok, lpv, top in zip(lp.tokens[len(ids) :], want_lps, lp.top_logprobs[len(ids) :]):
        assert len(top) == 3 and top[tok] == lpv  # greedy: the token is the top one
    # a list of token-id prompts and a list of strings: one choice each, in order
    r2 = c.completions.create(model="part1_ch18", prompt=[ids, local.encode("KING:")],
                              max_tokens=5, temperature=0)  # fmt: skip
    assert [x.index for x in r2.choices] == [0, 1]
    assert r2.choices[0].text == local.decode(want_ids[:5])
    assert r2.usage.prompt_tokens == len(ids) + 5


def test_scoring_only_equals_what_mygpt_eval_sums(server, local):
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    r = client(server).completions.create(
        model="part1_ch18", prompt=text, max_tokens=0, echo=True, logprobs=0
    )
    lps = r.choices[0].logprobs.token_logprobs
    assert r.choices[0].text == text and lps[0] is None and len(lps) == len(text)
    ids = np.array(local.encode(text))
    result = evaluate_tokens(local, ids, seq_len=len(ids) - 1)
    assert abs(-sum(lps[1:]) - result.nats) < 1e-4 * len(ids)


def test_n_choices_are_generate_with_consecutive_seeds(server, local):
    ids = local.encode("JULIET:")
    r = client(server).completions.create(model="part1_ch18", prompt="JULIET:", max_tokens=12,
                                          n=3, seed=11, temperature=1.0, extra_body={"top_k": 10})  # fmt: skip
    for j, ch in enumerate(r.choices):
        want, _ = solo(
            local, GenRequest(ids, max_tokens=12, temperature=1.0, top_k=10, seed=11 + j)
        )
        assert ch.index == j and ch.text == local.decode(want)


def test_chat_logprobs_in_the_chat_format(server, local):
    r = client(server).chat.completions.create(
        model="part1_ch18", messages=[{"role": "user", "content": "Good morrow"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content).startswith(r.choices[0].message.content)
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert content[0].bytes == list(content[0].token.encode())


@pytest.mark.parametrize(
    "prompt, words",
    [([], "prompt"), ([1, -2], "0..64"), ([3, 65], "0..64"), ([[1], []], "empty"),
     ([1] * 65, "context of 64")],
)  # fmt: skip
def test_bad_token_ids_are_refused(server, prompt, words):
    r = httpx.post(server + "/v1/completions", json={"prompt": prompt})
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_a_full_queue_is_answered_429_with_retry_after(server):
    url = server + "/v1/completions"
    body = {"prompt": "KING:", "max_tokens": 300, "temperature": 0, "n": 12, "stream": True}
    with httpx.stream("POST", url, json=body, timeout=60) as busy:  # 8 rows busy, 4 waiting
        assert busy.status_code == 200
        lines = busy.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        r = httpx.post(url, json={"prompt": "KING:", "max_tokens": 1})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "max-queue 4" in r.json()["error"]["message"]
    # the cancelled stream frees its rows: the server answers again
    for _ in range(50):
        if httpx.post(url, json={"prompt": "KING:", "max_tokens": 1}).status_code == 200:
            break
    else:
        raise AssertionError("the server stayed full after its clients left")
