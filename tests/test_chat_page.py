"""The chat page in headless Chromium: type a prompt, send it, watch streamed text arrive.

Uses Debian's ``/usr/bin/chromium`` through playwright (which never downloads a browser here);
``.ci/run`` installs chromium when it is absent. Set ``MYGPT_CHAT_SCREENSHOT=path.png`` to keep a
screenshot of the page (docs/serve/chat.png was made that way).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import BOOK_FIXTURES
from tests.serving import running_server

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (.ci/run installs it)")
def test_chat_page_streams_a_reply(tmp_path):
    ckpt = BOOK_FIXTURES / "part1_ch18.ckpt"
    with running_server(ckpt) as url, sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 600},
        )  # fmt: skip
        try:
            page = ctx.new_page()
            page.goto(url + "/")
            sync_api.expect(page.locator("#info")).to_contain_text("part1_ch18", timeout=15_000)
            page.fill("#max_tokens", "1000")  # long enough to be seen mid-stream
            page.fill("#prompt", "Good morrow, my lord")
            page.press("#prompt", "Enter")
            reply = page.locator(".msg.assistant").first
            # streaming: some text is visible before the reply is complete (its stats line)
            sync_api.expect(reply).not_to_have_text("", timeout=15_000)
            partial = reply.inner_text()
            assert page.locator(".meta").count() == 0, "the reply arrived all at once"
            sync_api.expect(reply.locator(".meta")).to_contain_text(" tokens in ", timeout=60_000)
            final = reply.inner_text()
            assert len(final) > len(partial)
            assert page.locator(".msg.user").inner_text() == "Good morrow, my lord"
            page.evaluate("document.getElementById('log').scrollTop = 0")  # the prompt in view
            shot = os.environ.get("MYGPT_CHAT_SCREENSHOT")
            page.screenshot(path=shot or str(tmp_path / "chat.png"))
        finally:
            ctx.close()
