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

from typing import Any

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


class JinjaChatTemplate:
    """A model's own chat template (Jinja), rendered the way ``transformers`` renders it.

    The environment is transformers': sandboxed and immutable, ``trim_blocks`` and
    ``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` that does not escape HTML,
    ``raise_exception``, ``strftime_now``, and the tokenizer's special tokens (``bos_token``,
    ``eos_token``, ...) as variables. The prompt it renders already spells the model's special
    tokens, so it is encoded without adding any (``add_special_tokens = False``). Generation
    stops at the model's end-of-sequence ids, not at a text.
    """

    add_special_tokens = False

    def __init__(self, template: str, special_tokens: dict[str, str] | None = None) -> None:
        self.name = "model"
        self.template = template
        self.special_tokens = dict(special_tokens or {})
        self._compiled = compile_jinja(template)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            return self._compiled.render(
                messages=messages, tools=None, documents=None,
                add_generation_prompt=add_generation_prompt, **self.special_tokens,
            )  # fmt: skip
        except jinja2.TemplateError as e:
            raise UsageError(f"the model's chat template refused the messages: {e}") from None

    def prompt(self, messages: list[tuple[str, str]]) -> str:
        return self.render([{"role": r, "content": c} for r, c in messages])

    def stops(self) -> list[str]:
        return []


def compile_jinja(template: str) -> Any:  # a jinja2.Template (jinja2 is imported lazily)
    """Compile ``template`` in transformers' chat-template environment (see JinjaChatTemplate)."""
    import json
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers marks assistant text): as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno
            )

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UsageError(f"the model's chat template does not parse ({e}) — fix it") from None


def template_for(spec: str | None, tokenizer) -> ChatTemplate | JinjaChatTemplate:
    """``--chat-template``: None means the model's own template where it has one, else transcript."""
    own = getattr(tokenizer, "chat_template", None)
    if spec in (None, "model", "auto") and own:
        return JinjaChatTemplate(own, tokenizer.special_tokens_map())
    if spec == "model":
        raise UsageError(
            "--chat-template model: this model's tokenizer has no chat template — use transcript, "
            "plain or a template of your own"
        )
    return ChatTemplate(spec if spec not in (None, "auto") else "transcript")
