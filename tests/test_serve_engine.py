"""The serve engine without HTTP: UTF-8 streaming, stop sequences, fair interleaving, cancel."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from mygpt.serve.engine import Engine, GenRequest, StopMatcher
from mygpt.tokenizers.bytebpe import ByteBPETokenizer


class FakeOps:
    name = "fake"

    @contextlib.contextmanager
    def inference(self):
        yield


class FakeModel:
    """Streams fixed token ids (a script per prompt) through a real byte-level tokenizer."""

    def __init__(self, scripts: dict[int, list[int]]) -> None:
        self.ops = FakeOps()
        self.tokenizer = ByteBPETokenizer([], special_tokens={})
        self.scripts = scripts
        self.order: list[int] = []  # which request each produced token belonged to

    def steps(self, prompt_ids, max_new_tokens, **kwargs):
        key = prompt_ids[0]
        for tok in self.scripts[key][:max_new_tokens]:
            self.order.append(key)
            yield tok, None


async def _run(engine: Engine, reqs: list[GenRequest]) -> list[list[tuple]]:
    # hold the worker until all are queued, so they are admitted together
    with engine._wake:
        jobs = [engine.submit(r) for r in reqs]

    async def drain(job):
        events = []
        while True:
            ev = await asyncio.wait_for(job.events.get(), timeout=10)
            events.append(ev)
            if ev[0] != "text":
                return events

    return await asyncio.gather(*(drain(j) for j in jobs))


def _engine(scripts: dict[int, list[int]], **kw) -> tuple[Engine, FakeModel]:
    model = FakeModel(scripts)
    engine = Engine(lambda: model, scheduler="round-robin", **kw)
    engine.start()
    return engine, model


def test_byte_tokens_split_inside_a_character_stream_as_whole_characters():
    text = "h\u00e9\u20ac\U0001f600!"  # 1-, 2-, 3- and 4-byte characters
    ids = list(text.encode("utf-8"))  # no merges: one token per byte
    engine, _ = _engine({0: ids})
    (events,) = asyncio.run(_run(engine, [GenRequest([0], max_tokens=len(ids))]))
    pieces = [e[1] for e in events if e[0] == "text"]
    assert pieces == ["h", "\u00e9", "\u20ac", "\U0001f600", "!"]
    assert events[-1] == ("end", "length", len(ids))


def test_an_incomplete_character_at_the_end_becomes_one_replacement_char():
    ids = list("a\u20ac".encode())[:-1]  # the euro sign's last byte never comes
    engine, _ = _engine({0: ids})
    (events,) = asyncio.run(_run(engine, [GenRequest([0], max_tokens=len(ids))]))
    assert "".join(e[1] for e in events if e[0] == "text") == "a\ufffd"


def test_stop_sequence_cuts_the_text_and_ends_generation_early():
    ids = list(b"abc\nUser: more")
    engine, model = _engine({0: ids})
    (events,) = asyncio.run(_run(engine, [GenRequest([0], max_tokens=50, stop=["\nUser:"])]))
    assert "".join(e[1] for e in events if e[0] == "text") == "abc"
    assert events[-1] == ("end", "stop", len(b"abc\nUser:"))
    assert len(model.order) == len(b"abc\nUser:")  # no token generated past the stop


@pytest.mark.parametrize(
    "pieces,stops,want",
    [
        (["ab", "c"], ["bc"], ("a", True)),
        (["xa", "b"], ["abc"], ("xab", False)),  # 'ab' held back, then released by flush
        (["a", "b", "d"], ["abc", "bd"], ("a", True)),  # the earliest match wins
        (["hello"], [], ("hello", False)),
    ],
)
def test_stop_matcher_holds_back_only_possible_stop_prefixes(pieces, stops, want):
    m = StopMatcher(stops)
    out, stopped = "", False
    for p in pieces:
        text, stopped = m.feed(p)
        out += text
        if stopped:
            break
    if not stopped:
        out += m.flush()
    assert (out, stopped) == want


def test_concurrent_requests_take_turns_token_by_token():
    scripts = {k: list(b"x" * 6) for k in (1, 2, 3)}
    engine, model = _engine(scripts)
    jobs = asyncio.run(_run(engine, [GenRequest([k], max_tokens=6) for k in (1, 2, 3)]))
    assert all(j[-1] == ("end", "length", 6) for j in jobs)
    assert model.order == [1, 2, 3] * 6


def test_requests_beyond_max_active_wait_in_order():
    scripts = {k: list(b"y" * 3) for k in (1, 2, 3)}
    engine, model = _engine(scripts, max_active=2)
    asyncio.run(_run(engine, [GenRequest([k], max_tokens=3) for k in (1, 2, 3)]))
    assert model.order == [1, 2, 1, 2, 1, 2, 3, 3, 3]


def test_a_cancelled_request_is_dropped_and_counted():
    engine, model = _engine({0: list(b"z" * 1000)})

    async def go():
        job = engine.submit(GenRequest([0], max_tokens=1000))
        await asyncio.wait_for(job.events.get(), timeout=10)
        job.cancel()
        for _ in range(200):
            if engine.load_state()["cancelled"]:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go())
    state = engine.load_state()
    assert state["cancelled"] == 1 and state["active"] == 0
    assert len(model.order) < 1000
