"""Chat templates: how messages become a base model's prompt, and where the reply stops."""

from __future__ import annotations

import pytest

from mygpt.errors import UsageError
from mygpt.serve.chat_template import ChatTemplate

MSGS = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")]


def test_transcript_is_the_default():
    t = ChatTemplate()
    assert t.prompt(MSGS) == "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:"
    assert t.stops() == ["\nUser:"]


def test_plain_is_the_messages_text_and_never_stops_early():
    t = ChatTemplate("plain")
    assert t.prompt(MSGS) == "Be brief.\nHi\nHello.\nBye\n"
    assert t.stops() == []


def test_a_custom_template_applies_to_every_message_then_opens_the_reply():
    t = ChatTemplate("<{role}> {content}\n")
    assert t.name == "custom"
    assert t.prompt(MSGS[1:2]) == "<user> Hi\n<assistant>"
    assert t.stops() == ["\n<user>"]


@pytest.mark.parametrize("spec", ["no content here", "{content} and {content}", "{who}: {content}"])
def test_bad_templates_are_usage_errors(spec):
    with pytest.raises(UsageError):
        ChatTemplate(spec)
