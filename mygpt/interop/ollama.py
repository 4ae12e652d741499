"""``mygpt export CKPT OUT.gguf --ollama``: an Ollama Modelfile beside the GGUF file.

``ollama create NAME -f Modelfile`` reads it: ``FROM ./OUT.gguf`` (relative to the Modelfile, as
Ollama resolves it), a ``TEMPLATE`` in Ollama's Go-template language that renders the model's own
chat template, ``PARAMETER stop`` for the tokens that end a turn, and ``num_ctx`` where the model
was trained for a context no longer than Ollama's default.

The chat template is recognised by what it renders, not by its text: a handful of probe
conversations are rendered with the model's Jinja template (transformers' environment) and
compared with each format this module knows, every message being ``open + role + close + content
+ end`` in order:

- ChatML (Qwen2, Qwen2.5, SmolLM2, the test models): ``<|im_start|>role\\n ... <|im_end|>\\n``;
- Llama 3: ``<|start_header_id|>role<|end_header_id|>\\n\\n ... <|eot_id|>``;

each with what varies between models: a literal prefix (the BOS text), a default system message
written when the conversation does not start with one (Qwen2.5's, SmolLM2's), and whether the
content is trimmed (Llama 3's). A template that matches none is refused in one line; a model with
no chat template at all (mygpt's own char and byte-level BPE models) gets Ollama's plain
completion template ``{{ .Prompt }}``.

What the Go template cannot say is printed as a note: Go templates have no trim, so a message
that starts or ends with whitespace keeps it in Ollama where the model's template strips it.
Where llama.cpp adds the BOS token itself (``add_bos_token``) the template leaves the BOS text out,
or the prompt would start with two.

System messages render in place from ``.Messages`` (as the model's template renders them), so
``.System`` (Ollama's join of all system messages) is not used; the last message, when it is the
assistant's, is left open for the model to continue, as Ollama continues it (transformers'
``continue_final_message``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.interop.gguf_tokenizer import GGUFVocab

MODELFILE = "Modelfile"
PLAIN_TEMPLATE = "{{ .Prompt }}"
#: Ollama's default context (2048, 4096 in newer releases): a model trained for no more gets its
#: own as num_ctx, so Ollama shifts the context before positions it never learned; a longer one
#: is left to Ollama (asking for a long model's whole context costs its KV-cache memory)
OLLAMA_DEFAULT_CTX = 4096


@dataclass(frozen=True)
class TurnFormat:
    """A chat format in which every message is ``open + role + close + content + end``."""

    name: str
    open: str
    close: str
    end: str
    end_of_turn: str  # the token that ends a turn: a stop

    def head(self, role: str) -> str:
        return self.open + role + self.close


FORMATS = (
    TurnFormat("ChatML", "<|im_start|>", "\n", "<|im_end|>\n", "<|im_end|>"),
    TurnFormat("Llama 3", "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>",
               "<|eot_id|>"),
)  # fmt: skip


@dataclass(frozen=True)
class ChatFormat:
    """A model's chat template as one of :data:`FORMATS` with its parameters."""

    turn: TurnFormat
    prefix: str  # literal text before the conversation (e.g. the BOS token's text)
    default_system: str | None  # written when the first message is not a system message
    trims: bool  # the template strips whitespace around each message's content

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The text the model's template renders for ``messages`` (the reference for probes)."""
        t = self.turn
        out = self.prefix
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            out += t.head("system") + self.default_system + t.end
        for m in messages:
            content = m["content"].strip() if self.trims else m["content"]
            out += t.head(m["role"]) + content + t.end
        return out + (t.head("assistant") if add_generation_prompt else "")


# --- recognising a template ----------------------------------------------------------------------

_SYSTEM = {"role": "system", "content": "Answer in one line."}
_USER = {"role": "user", "content": "Who wrote Hamlet?"}
_ASSISTANT = {"role": "assistant", "content": "Shakespeare."}
_USER2 = {"role": "user", "content": "And Macbeth?"}
_PADDED = {"role": "user", "content": "  Who wrote Hamlet?\n"}
#: (messages, add_generation_prompt): every role, several turns, a finished turn, padding
PROBES: tuple[tuple[list[dict], bool], ...] = (
    ([_USER], True),
    ([_SYSTEM, _USER], True),
    ([_USER, _ASSISTANT, _USER2], True),
    ([_SYSTEM, _USER, _ASSISTANT, _USER2], True),
    ([_USER, _ASSISTANT], False),
    ([_PADDED], True),
)


def _jinja_renderer(template: str, special: dict[str, str]) -> Any:
    """``render(messages, add_generation_prompt)`` as transformers' ``apply_chat_template``."""
    from mygpt.tokenizers.jinja import compile_jinja

    compiled = compile_jinja(template)

    def render(messages: list[dict], gen: bool) -> str:
        return compiled.render(messages=messages, add_generation_prompt=gen, tools=None,
                               documents=None, **special)  # fmt: skip

    return render


def _candidates(turn: TurnFormat, first: str) -> list[ChatFormat]:
    """The parameters under which ``turn`` renders the first probe as ``first``."""
    tail = turn.head("user") + _USER["content"] + turn.end + turn.head("assistant")
    if not first.endswith(tail):
        return []
    rest = first[: -len(tail)]
    at = rest.find(turn.head("system"))
    prefix, default = rest, None
    if at >= 0 and rest.endswith(turn.end):
        prefix, default = rest[:at], rest[at + len(turn.head("system")) : -len(turn.end)]
    return [ChatFormat(turn, prefix, default, trims) for trims in (False, True)]


def recognise(template: str, special: dict[str, str]) -> ChatFormat:
    """The format the Jinja ``template`` renders on every probe, or a one-line refusal."""
    import jinja2

    render = _jinja_renderer(template, special)
    try:
        seen = [render(messages, gen) for messages, gen in PROBES]
    except jinja2.TemplateError as e:
        raise _unknown(f"it refused a plain conversation: {e}") from None
    for turn in FORMATS:
        for fmt in _candidates(turn, seen[0]):
            if all(fmt.render(m, gen) == s for (m, gen), s in zip(PROBES, seen, strict=True)):
                return fmt
    raise _unknown("it renders messages in none of their layouts")


def _unknown(why: str) -> MygptError:
    known = " and ".join(t.name for t in FORMATS)
    return MygptError(
        f"--ollama can't write the model's chat template in Ollama's template language exactly "
        f"({why}; it knows {known}) — export without --ollama and write the Modelfile's "
        "TEMPLATE yourself"
    )


# --- the Go template -----------------------------------------------------------------------------


def _text(s: str) -> str:
    """Literal text in a Go template (``{{`` would open an action)."""
    return s.replace("{{", '{{ "{{" }}')


def go_template(fmt: ChatFormat, bos_added: str | None = None) -> str:
    """Ollama's TEMPLATE for ``fmt``; ``bos_added``: the BOS text llama.cpp already puts first.

    No whitespace outside the literals and no ``{{-``: every byte of the text is the format's."""
    t = fmt.turn
    prefix = fmt.prefix
    if bos_added and prefix.startswith(bos_added):
        prefix = prefix[len(bos_added) :]
    out = _text(prefix)
    if fmt.default_system is not None:
        out += ('{{ if .Messages }}{{ if ne (index .Messages 0).Role "system" }}'
                + _text(t.head("system") + fmt.default_system + t.end)
                + "{{ end }}{{ end }}")  # fmt: skip
    return out + (
        "{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + _text(t.open) + "{{ $m.Role }}" + _text(t.close) + "{{ $m.Content }}"
        + '{{ if or (not $last) (ne $m.Role "assistant") }}' + _text(t.end) + "{{ end }}"
        + '{{ if and $last (ne $m.Role "assistant") }}' + _text(t.head("assistant"))
        + "{{ end }}{{ end }}"
    )  # fmt: skip


# --- the Modelfile -------------------------------------------------------------------------------


def _holdable(s: str, what: str) -> str:
    """``s`` if Ollama's Modelfile parser reads it back unchanged inside quotes: it drops the
    characters Go does not count as printable and has no escape for three quotes in a row."""
    bad = [c for c in s if not (c.isprintable() or c in "\n\t")]
    if bad or '"""' in s:
        shown = repr(bad[0]) if bad else "three quotes in a row"
        raise MygptError(
            f"{what} has {shown}, which an Ollama Modelfile can't hold — export without --ollama "
            "and write the Modelfile yourself"
        )
    return s


def _argument(s: str, what: str) -> str:
    """``s`` as a Modelfile argument: bare where the parser keeps it as is, else quoted (triple
    quotes across lines; the parser ends an argument at the first line break after it)."""
    s = _holdable(s, what)
    if "\n" in s:
        return f'"""{s}"""'
    if not s or s != s.strip() or s.startswith('"'):
        return f'"{s}"'
    return s


@dataclass
class Modelfile:
    """What ``--ollama`` writes, and what to say about it."""

    text: str
    notes: list[str]


def modelfile_path(gguf_path: str | Path) -> Path:
    """Where the Modelfile goes: beside the GGUF, under the name ``ollama create`` looks for."""
    return Path(gguf_path).parent / MODELFILE


def _template_and_stops(tok_dict: dict, vocab: GGUFVocab) -> tuple[ChatFormat | None, list[int]]:
    if tok_dict.get("kind") != "hf":  # mygpt's own tokenizers: no chat template
        return None, [vocab.eos] if vocab.eos is not None else []
    from mygpt.tokenizers import tokenizer_from_dict

    tok = tokenizer_from_dict(tok_dict)
    template = tok.chat_template
    fmt = recognise(template, tok.special_tokens_map()) if template else None
    return fmt, list(tok.stop_ids())


def _stops(fmt: ChatFormat | None, ids: list[int], vocab: GGUFVocab) -> list[str]:
    """The stop tokens' texts: the tokenizer's end ids and the format's end-of-turn token."""
    names = [vocab.tokens[i] for i in ids if 0 <= i < len(vocab.tokens)]
    if fmt is not None and fmt.turn.end_of_turn in vocab.tokens:
        names.append(fmt.turn.end_of_turn)
    return list(dict.fromkeys(names))


def _notes(fmt: ChatFormat, vocab: GGUFVocab, bos: str | None) -> list[str]:
    notes = []
    if fmt.trims:
        notes.append(
            "note: the model's chat template strips whitespace around each message and Ollama's "
            "template language can't: in Ollama a message that starts or ends with whitespace "
            "keeps it"
        )
    if vocab.add_bos and not (bos and fmt.prefix.startswith(bos)):
        notes.append(
            "note: llama.cpp (and so Ollama) puts the BOS token before every prompt, which the "
            "model's chat template does not write"
        )
    return notes


def build_modelfile(
    gguf_name: str, tok_dict: dict, vocab: GGUFVocab, cfg: ModelConfig
) -> Modelfile:
    """The Modelfile for the GGUF file ``gguf_name`` in the same directory, or a refusal."""
    fmt, ids = _template_and_stops(tok_dict, vocab)
    bos = vocab.tokens[vocab.bos] if vocab.bos is not None else None
    template = PLAIN_TEMPLATE if fmt is None else go_template(fmt, bos if vocab.add_bos else None)
    stops = _stops(fmt, ids, vocab)
    lines = [
        f"# for Ollama: ollama create NAME -f {MODELFILE}",
        f"FROM {_argument('./' + gguf_name, 'the GGUF file name')}",
        f'TEMPLATE """{_holdable(template, "the chat template")}"""',
        *(f"PARAMETER stop {_argument(s, 'a stop token')}" for s in stops),
    ]
    if cfg.max_seq_len <= OLLAMA_DEFAULT_CTX:
        lines.append(f"PARAMETER num_ctx {cfg.max_seq_len}")
    notes = [] if fmt is None else _notes(fmt, vocab, bos)
    return Modelfile("\n".join(lines) + "\n", notes)
