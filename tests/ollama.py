"""Ollama's side of a Modelfile, for tests (Ollama itself is not installable here).

- :func:`parse_modelfile`: Ollama's Modelfile grammar (its parser's state machine: a command
  keyword, then an argument that ends at the first line break where it unquotes; ``"..."`` and
  ``\"\"\"...\"\"\"`` quotes; ``#`` comments; ``PARAMETER name value``; characters Go does not
  count as printable dropped, tabs and line breaks kept inside an argument).
- :func:`render_go`: the subset of Go's text/template that chat templates use (text, ``{{ }}``
  actions with ``-`` trim markers, ``if``/``else if``/``else``/``end``, ``range $i, $m :=``,
  ``$v :=``, fields of ``.``, ``$`` and variables, parenthesised pipelines with fields, string and
  integer literals, and the functions ``eq ne lt gt and or not len slice index``). Anything else
  raises, so a template outside the subset fails the test rather than rendering wrongly.
- :func:`ollama_prompt`: what Ollama renders for a chat: messages of one role in a row merged
  with a blank line (its ``collate``), then the template with ``.Messages`` and ``.System``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires"}  # fmt: skip


# --- the Modelfile ---------------------------------------------------------------------------


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _printable(c: str) -> bool:
    return (
        c.isprintable()
    )  # Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols, ' '


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, argument) pairs as Ollama's parser reads them: ``model`` for FROM, the
    parameter's own name for PARAMETER. Raises ValueError where Ollama's parser fails."""
    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""
    for c in text:
        if state == "nil":
            if c == "#":
                state = "comment"
            elif c not in " \t\r\n":
                state, buf = "name", c
        elif state == "comment":
            state = "nil" if c in "\r\n" else "comment"
        elif state in ("name", "parameter"):
            if c in " \t":
                if state == "name":
                    low = buf.lower()
                    if low not in COMMANDS:
                        raise ValueError(f"unknown command {buf!r}")
                    if low == "message":
                        raise ValueError("MESSAGE is not used here")
                    name = "model" if low == "from" else low
                    state, buf = ("parameter" if low == "parameter" else "value"), ""
                else:
                    name, state, buf = buf, "value", ""
            elif c.isalpha() or (state == "parameter" and (c.isdigit() or c == "_")):
                buf += c
            else:
                raise ValueError(f"bad character {c!r} in a command name")
        elif state == "value":
            if c in " \t\r\n":
                value, ok = _unquote(buf.strip())
                if not ok or c in " \t":
                    buf += c
                    continue
                commands.append((name, value))
                state, buf = "nil", ""
            elif _printable(c):
                buf += c
    if state == "value":
        value, ok = _unquote(buf.strip())
        if not ok:
            raise ValueError("unexpected end of file inside a quoted argument")
        commands.append((name, value))
    elif state not in ("nil", "comment"):
        raise ValueError("unexpected end of file")
    if not any(n == "model" for n, _ in commands):
        raise ValueError("no FROM line")
    return commands


# --- Go templates ----------------------------------------------------------------------------

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<num>-?\d+)|(?P<decl>:=)|(?P<lp>\()|(?P<rp>\))'
    r"|(?P<comma>,)|(?P<var>\$\w*)|(?P<field>(?:\.\w+)+|\.)|(?P<ident>\w+))"
)


@dataclass
class Node:
    kind: str  # text, out, if, range, set
    text: str = ""
    expr: Any = None
    body: list = field(default_factory=list)
    orelse: list = field(default_factory=list)
    names: tuple = ()


def _lex(src: str) -> list[tuple[str, str]]:
    """The template as ("text", s) and ("act", s) pieces, trim markers applied."""
    pieces: list[tuple[str, str]] = []
    at = 0
    for m in ACTION.finditer(src):
        text = src[at : m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        pieces.append(("text", text))
        pieces.append(("act", m.group(2).strip()))
        if m.group(3):
            rest = src[m.end() :]
            at = m.end() + len(rest) - len(rest.lstrip(" \t\r\n"))
        else:
            at = m.end()
    pieces.append(("text", src[at:]))
    return [p for p in pieces if p != ("text", "")]


def _tokens(s: str) -> list[tuple[str, str, bool]]:
    """(kind, text, glued to the previous token) of one action."""
    out, at = [], 0
    while at < len(s):
        m = TOKEN.match(s, at)
        if not m or m.end() == at:
            raise ValueError(f"can't read {s[at:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind), m.start(kind) == at))
        at = m.end()
    return out


def _operand(toks: list, i: int) -> tuple[Any, int]:
    kind, text, _ = toks[i]
    if kind == "lp":
        expr, i = _pipeline(toks, i + 1)
        if toks[i][0] != "rp":
            raise ValueError("unclosed (")
        i += 1
        if i < len(toks) and toks[i][0] == "field" and toks[i][2]:  # (pipeline).Field
            expr = ("fields", expr, toks[i][1].split(".")[1:])
            i += 1
        return expr, i
    if kind == "str":
        return ("lit", bytes(text[1:-1], "utf-8").decode("unicode_escape")), i + 1
    if kind == "num":
        return ("lit", int(text)), i + 1
    if kind == "field":
        return ("fields", ("dot",), [f for f in text.split(".")[1:] if f]), i + 1
    if kind == "var":
        expr: Any = ("var", text)
        if i + 1 < len(toks) and toks[i + 1][0] == "field" and toks[i + 1][2]:
            return ("fields", expr, toks[i + 1][1].split(".")[1:]), i + 2
        return expr, i + 1
    if kind == "ident":
        if text in ("true", "false"):
            return ("lit", text == "true"), i + 1
        return ("func", text), i + 1
    raise ValueError(f"unexpected {text!r}")


def _pipeline(toks: list, i: int) -> tuple[Any, int]:
    """One command (no ``|`` pipes in the subset): a function and its arguments, or a value."""
    args = []
    while i < len(toks) and toks[i][0] not in ("rp",):
        arg, i = _operand(toks, i)
        args.append(arg)
    if not args:
        raise ValueError("empty pipeline")
    if args[0][0] == "func":
        return ("call", args[0][1], args[1:]), i
    if len(args) != 1:
        raise ValueError("arguments to a non-function")
    return args[0], i


def _expr(s: str) -> Any:
    toks = _tokens(s)
    expr, i = _pipeline(toks, 0)
    if i != len(toks):
        raise ValueError(f"trailing {s!r}")
    return expr


def _parse(pieces: list, i: int = 0, stop: tuple = ()) -> tuple[list, int, str]:
    nodes: list[Node] = []
    while i < len(pieces):
        kind, s = pieces[i]
        i += 1
        if kind == "text":
            nodes.append(Node("text", text=s))
            continue
        word = s.split(None, 1)[0] if s else ""
        if word in ("end", "else") and stop:
            return nodes, i, s
        if word == "if":
            node, i = _parse_if(s[2:], pieces, i)
            nodes.append(node)
        elif word == "range":
            m = re.match(r"range\s+(?:(\$\w+)\s*(?:,\s*(\$\w+))?\s*:=\s*)?(.*)$", s, re.S)
            names = tuple(n for n in (m.group(1), m.group(2)) if n)
            node = Node("range", expr=_expr(m.group(3)), names=names)
            node.body, i, ended = _parse(pieces, i, ("end",))
            nodes.append(node)
        elif re.match(r"\$\w+\s*:=", s):
            var, rest = s.split(":=", 1)
            nodes.append(Node("set", names=(var.strip(),), expr=_expr(rest)))
        elif word in ("with", "define", "template", "block", "break", "continue"):
            raise ValueError(f"{word} is outside the subset")
        else:
            nodes.append(Node("out", expr=_expr(s)))
    if stop:
        raise ValueError("missing {{ end }}")
    return nodes, i, ""


def _parse_if(cond: str, pieces: list, i: int) -> tuple[Node, int]:
    """An ``if`` up to its ``end``; an ``else if`` is an ``if`` in the else branch sharing it."""
    node = Node("if", expr=_expr(cond))
    node.body, i, ended = _parse(pieces, i, ("end", "else"))
    rest = ended[4:].strip() if ended.startswith("else") else None
    if rest is not None and rest.startswith("if "):
        inner, i = _parse_if(rest[3:], pieces, i)
        node.orelse = [inner]
    elif rest is not None:
        node.orelse, i, _ = _parse(pieces, i, ("end",))
    return node, i


def parse_go(src: str) -> list[Node]:
    nodes, _, _ = _parse(_lex(src))
    return nodes


def _truth(v: Any) -> bool:
    return bool(v)  # Go: false, 0, "", nil and empty collections are false, as in Python


def _field(v: Any, name: str) -> Any:
    if isinstance(v, dict):
        return v.get(name, "")  # missingkey=zero
    raise ValueError(f"field {name} of {type(v).__name__}")


FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "gt": lambda a, b: a > b,
    "not": lambda a: not _truth(a),
    "len": len,
    "index": lambda a, *ks: _index(a, ks),
    "slice": lambda a, *ks: a[ks[0] : ks[1]] if len(ks) == 2 else a[ks[0] :] if ks else a,
}


def _index(a: Any, keys: tuple) -> Any:
    for k in keys:
        a = a[k]
    return a


def _eval(e: Any, dot: Any, env: dict) -> Any:
    kind = e[0]
    if kind == "lit":
        return e[1]
    if kind == "dot":
        return dot
    if kind == "var":
        return env[e[1]]
    if kind == "fields":
        v = _eval(e[1], dot, env)
        for name in e[2]:
            v = _field(v, name)
        return v
    if kind == "call":
        name, args = e[1], e[2]
        if name in ("and", "or"):  # Go evaluates these lazily, returning the deciding argument
            v = None
            for a in args:
                v = _eval(a, dot, env)
                if _truth(v) != (name == "and"):
                    return v
            return v
        if name not in FUNCS:
            raise ValueError(f"function {name} is outside the subset")
        return FUNCS[name](*[_eval(a, dot, env) for a in args])
    raise ValueError(f"can't evaluate {e!r}")


def _run(nodes: list[Node], dot: Any, env: dict, out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
        elif n.kind == "out":
            v = _eval(n.expr, dot, env)
            out.append("true" if v is True else "false" if v is False else str(v))
        elif n.kind == "set":
            env[n.names[0]] = _eval(n.expr, dot, env)
        elif n.kind == "if":
            branch = n.body if _truth(_eval(n.expr, dot, env)) else n.orelse
            _run(branch, dot, dict(env), out)
        elif n.kind == "range":
            for i, item in enumerate(_eval(n.expr, dot, env)):
                scope = dict(env)
                if len(n.names) == 2:
                    scope[n.names[0]], scope[n.names[1]] = i, item
                elif n.names:
                    scope[n.names[0]] = item
                _run(n.body, item, scope, out)


def render_go(src: str, data: dict) -> str:
    """``src`` executed on ``data`` (dicts for Go's structs and maps)."""
    out: list[str] = []
    _run(parse_go(src), data, {"$": data}, out)
    return "".join(out)


def ollama_prompt(template: str, messages: list[dict]) -> str:
    """The prompt Ollama renders for a chat with ``template`` (a template that uses .Messages)."""
    merged: list[dict] = []
    for m in messages:  # Ollama's collate
        if merged and merged[-1]["Role"] == m["role"] and m["role"] != "tool":
            merged[-1]["Content"] += "\n\n" + m["content"]
        else:
            merged.append({"Role": m["role"], "Content": m["content"]})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return render_go(template, {"System": system, "Messages": merged, "Response": ""})
