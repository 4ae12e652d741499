"""How ``/v1/chat/completions`` turns messages into a prompt for a base model.

A mygpt model is a base model: it continues text and knows nothing of roles. A chat template
writes the conversation as text it can continue. A template is one line with ``{content}`` and
optionally ``{role}`` (``user``) or ``{Role}`` (``User``), applied to every message in order; the
prompt then ends with the template's part before ``{content}`` for the assistant (less trailing
spaces: BPE tokenizers glue a space to the word after it, so the model writes it), and the model
writes the assistant's turn. When that part is not empty, generation also stops where the model
starts the user's next turn (the template's tail plus the user's head), as a chat would.

Built-ins (``mygpt serve --chat-template NAME``; any other value is used as the template itself):

- ``transcript`` (default): ``"{Role}: {content}\\n"`` — ``User: hi\\nAssistant:`` + reply,
  stopping at ``\\nUser:``. Suits play-like corpora such as Tiny Shakespeare.
- ``plain``: ``"{content}\\n"`` — the messages' text, one per line; the model just continues it.
"""

from __future__ import annotations

from mygpt.errors import UsageError

TEMPLATES = {"transcript": "{Role}: {content}\n", "plain": "{content}\n"}


class ChatTemplate:
    def __init__(self, spec: str = "transcript") -> None:
        self.name = spec if spec in TEMPLATES else "custom"
        self.template = TEMPLATES.get(spec, spec)
        if self.template.count("{content}") != 1:
            raise UsageError(
                f"chat template {spec!r} needs {{content}} exactly once — use transcript, plain "
                "or e.g. '{Role}: {content}\\n'"
            )
        head, self._tail = self.template.split("{content}")
        try:
            self._head = head.format(role="user", Role="User")
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(
                f"chat template {spec!r} has an unknown placeholder ({e}) — only {{role}}, "
                "{Role} and {content} are allowed"
            ) from None
        self._raw_head = head

    def _head_for(self, role: str) -> str:
        return self._raw_head.format(role=role, Role=role.capitalize())

    def prompt(self, messages: list[tuple[str, str]]) -> str:
        """The text the model continues: every (role, content) message, then the assistant's head."""
        body = "".join(self._head_for(r) + c + self._tail for r, c in messages)
        return body + self._head_for("assistant").rstrip(" ")

    def stops(self) -> list[str]:
        """Where the assistant's turn ends: the next user turn's start (none for ``plain``)."""
        head = self._head_for("user").rstrip(" ")
        return [self._tail + head] if head and self._tail else []
