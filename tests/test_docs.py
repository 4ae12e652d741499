"""The docs stay true: README.md and docs/**/*.md are checked against the repository itself.

- every relative link resolves, to a file that exists and, with ``#anchor``, to a heading of that
  page (GitHub's heading slugs);
- every ``mygpt ...`` command line in a shell code block parses with the CLI's own click parser
  (the sub-command exists, each flag is accepted, no stray arguments), without running it;
- the README's test command is the one ``.ci/run`` runs, and the README shows it first;
- every docs page (``docs/*.md``) is linked from the README;
- no internal issue numbers ("issue 6 measured", "#20"): say what was measured and how to rerun it.

Each check is a plain function over text, so the tests at the bottom feed it a small broken
synthetic page and see it fail.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
#: what a code block may write for "and more arguments": dropped before parsing
ELLIPSES = {"...", "…"}

# --- reading markdown --------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


def doc_paths(root: Path = ROOT) -> list[Path]:
    """The user-facing docs: the README and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, int, list[str]]]]:
    """(prose lines with their numbers, fenced blocks as (language, first line number, lines))."""
    prose: list[tuple[int, str]] = []
    blocks: list[tuple[str, int, list[str]]] = []
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            blocks.append((m.group(2).lower(), n + 1, []))
        elif fence is not None and _closes(line, fence):
            fence = None
        elif fence is not None:
            blocks[-1][2].append(line)
        else:
            prose.append((n, line))
    return prose, blocks


def _closes(line: str, fence: str) -> bool:
    """A closing fence: the opening's character only, at least as many."""
    mark = line.strip()
    return set(mark) == {fence[0]} and len(mark) >= len(fence)


def _strip_inline_code(line: str) -> str:
    return re.sub(r"(`+)(?:(?!\1).)*?\1", "", line)


# --- headings and links ------------------------------------------------------------------------


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation dropped, each
    space a hyphen (github-slugger keeps letters, digits, ``_`` and ``-``)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page defines: its headings' slugs (repeats get -1, -2, ...) and HTML ids."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    prose, _ = split_fences(text)
    for _, line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = slugify(m.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
        out.update(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", line))
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HTML_REF = re.compile(r"""(?:href|src)=["']([^"']+)["']""")


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code: inline, reference, HTML."""
    out = []
    prose, _ = split_fences(text)
    for n, line in prose:
        line = _strip_inline_code(line)
        for rx in (LINK, REF_DEF, HTML_REF):
            out += [(n, t) for t in rx.findall(line)]
    return out


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)) or target.startswith("//")


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Each relative link of `page` whose file is missing or whose anchor is not on its page."""
    text = page.read_text(encoding="utf-8") if text is None else text
    errors = []
    for n, target in links(text):
        if is_external(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.name}:{n}: link {target!r}"
        if not dest.exists():
            errors.append(f"{where}: no such file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(_read(dest, page, text)):
            errors.append(f"{where}: no heading with anchor #{anchor} in {dest.name}")
    return errors


def _read(dest: Path, page: Path, text: str) -> str:
    return text if dest == page.resolve() or dest == page else dest.read_text(encoding="utf-8")


# --- command lines -----------------------------------------------------------------------------


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of each shell code block, `\\` continuations joined."""
    out: list[tuple[int, str]] = []
    _, blocks = split_fences(text)
    for lang, first, lines in blocks:
        if lang not in SHELL_LANGS:
            continue
        pending, start = "", first
        for i, line in enumerate(lines):
            if not pending:
                start = first + i
            stripped = line.rstrip()
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            out.append((start, re.sub(r"^\s*\$\s+", "", pending + stripped)))
            pending = ""
    return out


#: ``<name>`` as a placeholder (not a redirection): read as the word
PLACEHOLDER = re.compile(r"(?<![\w\"'])<([A-Za-z][\w.-]*)>")
#: a bare shell variable, which may expand to any number of arguments
VARIABLE = re.compile(r"^\$(\w+|\{\w+\}|@|\*)$")


def _tokens(line: str) -> list[str]:
    lex = shlex.shlex(PLACEHOLDER.sub(r"\1", line), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError:  # an unbalanced quote: treat the line as prose, not a command
        return []


def mygpt_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, arguments after ``mygpt``) of each invocation in the shell code blocks:
    ``mygpt``, ``uv run mygpt``, ``python -m mygpt``, ``torchrun ... -m mygpt``,
    ``mlx.launch ... -- mygpt``; commands joined by ``&&``, ``;`` or ``|`` each count."""
    out = []
    for n, line in shell_lines(text):
        segment: list[str] = []
        for tok in [*_tokens(line), ";"]:
            if tok and set(tok) <= set("();<>|&"):  # a shell operator ends a command
                out += [(n, cmd) for cmd in [_after_mygpt(segment)] if cmd is not None]
                segment = []
            else:
                segment.append(tok)
    return out


def _after_mygpt(tokens: list[str]) -> list[str] | None:
    for i, tok in enumerate(tokens):
        if tok == "mygpt" or tok.endswith("/bin/mygpt"):
            args = [t for t in tokens[i + 1 :] if t not in ELLIPSES]
            # a variable after a flag is that flag's value; anywhere else it could be anything
            return [
                t
                for j, t in enumerate(args)
                if not VARIABLE.match(t) or (j > 0 and args[j - 1].startswith("-"))
            ]
    return None


def command_error(args: list[str], group: click.Group | None = None) -> str | None:
    """Why click would refuse ``mygpt ARGS`` (an unknown command or flag, a flag without its
    value, a stray argument), or None. Only click's parser runs: no value is converted and no
    callback fires, so placeholders like ``FILE`` or ``$r`` are fine and nothing executes.
    (``make_context(resilient_parsing=True)`` would not do: it swallows unknown options too.)"""
    if group is None:
        from mygpt.cli import cli as group
    cmd: click.Command = group
    ctx, name = None, "mygpt"
    try:
        while True:
            ctx = cmd.context_class(cmd, info_name=name, parent=ctx, **cmd.context_settings)
            _, rest, _ = cmd.make_parser(ctx).parse_args(args=list(args))
            if not isinstance(cmd, click.Group):
                return f"unexpected extra arguments {rest}" if rest else None
            if not rest:
                return None
            name, args = rest[0], rest[1:]
            sub = cmd.get_command(ctx, name)
            if sub is None:
                return f"no such command {name!r} in `{ctx.command_path}`"
            cmd = sub
    except click.UsageError as e:
        return f"{e.format_message()} (`{ctx.command_path}`)"


def bad_commands(page: Path, text: str | None = None) -> list[str]:
    text = page.read_text(encoding="utf-8") if text is None else text
    return [
        f"{page.name}:{n}: `mygpt {shlex.join(args)}`: {err}"
        for n, args in mygpt_commands(text)
        if (err := command_error(args)) is not None
    ]


# --- the README's test command, docs pages, issue numbers --------------------------------------


def ci_test_command(ci_script: str) -> str:
    """The one pytest command `.ci/run` runs (comments and blank lines aside)."""
    cmds = [
        line.strip()
        for line in ci_script.splitlines()
        if re.match(r"^\s*uv run pytest\b", line) and not line.strip().startswith("#")
    ]
    assert len(cmds) == 1, f".ci/run should run exactly one pytest command, found {cmds}"
    return cmds[0]


def readme_setup_commands(readme: str) -> list[str]:
    """The first code block's commands, comments dropped: the README's set-up commands."""
    _, blocks = split_fences(readme)
    assert blocks, "the README has no code block"
    return [shlex.join(_tokens(line)) for _, line in shell_lines_of(blocks[0]) if _tokens(line)]


def shell_lines_of(block: tuple[str, int, list[str]]) -> list[tuple[int, str]]:
    lang, first, lines = block
    fence = f"```{lang}"
    return shell_lines("\n".join([fence, *lines, "```"]))


ISSUE_REF = re.compile(r"\b[Ii]ssues?\s+#?\d+\b|(?<![\w&/#(])#\d+\b")


def issue_numbers(text: str) -> list[str]:
    """Internal issue numbers in a page: "issue 6", "Issues 20", "#20" (not ``#anchor`` links)."""
    return [
        f"{n}: {m.group(0)!r}"
        for n, line in enumerate(text.splitlines(), 1)
        for m in ISSUE_REF.finditer(line)
    ]


def unlinked_pages(readme_path: Path, pages: list[Path]) -> list[str]:
    linked = {
        (readme_path.parent / t.partition("#")[0]).resolve()
        for _, t in links(readme_path.read_text(encoding="utf-8"))
        if not is_external(t)
    }
    return [p.name for p in pages if p.resolve() not in linked]


# --- the repository's docs ---------------------------------------------------------------------


@pytest.mark.parametrize("page", doc_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    assert not broken_links(page)


@pytest.mark.parametrize("page", doc_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_command_lines_parse(page):
    assert not bad_commands(page)


def test_the_docs_show_commands():
    """The command check sees the commands (a parser that found none would pass anything)."""
    found = sum(len(mygpt_commands(p.read_text(encoding="utf-8"))) for p in doc_paths())
    assert found >= 40


def test_readme_starts_with_train_then_ci_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = ci_test_command((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert readme_setup_commands(readme) == ["uv run mygpt train", ci]


def test_readme_is_short_and_links_every_docs_page():
    readme = ROOT / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) <= 260
    assert not unlinked_pages(readme, sorted((ROOT / "docs").glob("*.md")))


@pytest.mark.parametrize("page", doc_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_issue_numbers(page):
    assert not issue_numbers(page.read_text(encoding="utf-8"))


# --- each check can fail -----------------------------------------------------------------------

SYNTHETIC = """# A page

## Serving and evaluating (the `serve` command)

[ok](#serving-and-evaluating-the-serve-command) [ok too](other.md#second-heading)
[no file](missing.md) [no anchor](other.md#nowhere) [no local anchor](#nope)
`[in code](missing-too.md)` [web](https://example.com/x.md)

```bash
uv run mygpt train --steps 10 --no-such-flag 3   # a comment --not-a-flag
uv run mygpt trian
mygpt generate --checkpoint X --prompt "a b" \\
    --max-new-tokens 5 --top-k
python -m mygpt tokenizer train --vocab-size 300 FILE --bogus && echo done
torchrun --nproc-per-node 2 -m mygpt train --recipe ch27-modern ...
mygpt eval --checkpoint $CKPT valid.txt extra.txt
```

```python
mygpt train --not-checked   # python blocks are not shell
```
"""

OTHER = "# Other\n\n## Second heading\n"


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "other.md").write_text(OTHER, encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(SYNTHETIC, encoding="utf-8")
    errors = broken_links(page)
    assert len(errors) == 3, errors
    assert "missing.md" in errors[0] and "#nowhere" in errors[1] and "#nope" in errors[2]


def test_slugs_follow_github():
    assert slugify("LoRA fine-tuning (adapters that peft and transformers read)") == (
        "lora-fine-tuning-adapters-that-peft-and-transformers-read"
    )
    assert slugify("Ch.27: baseline vs `modern` recipe") == "ch27-baseline-vs-modern-recipe"
    assert slugify("[Muon](x.md) and  init") == "muon-and--init"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1", "a-2"}


def test_bad_command_lines_are_reported(tmp_path):
    page = tmp_path / "page.md"
    errors = bad_commands(page, SYNTHETIC)
    joined = "\n".join(errors)
    assert len(errors) == 5, joined
    assert "--no-such-flag" in errors[0] and "not-a-flag" not in joined
    assert "trian" in errors[1]
    # a line continued with `\` is one command, reported at its first line
    assert "--top-k" in errors[2] and "page.md:12:" in errors[2]
    assert "--bogus" in errors[3]
    assert "extra.txt" in errors[4]
    assert [args[0] for _, args in mygpt_commands(SYNTHETIC)] == [
        "train", "trian", "generate", "tokenizer", "train", "eval"
    ]  # fmt: skip


def test_placeholders_and_variables_are_read_sensibly():
    text = "```sh\n$ mygpt generate --checkpoint <ckpt> --top-k $K $EXTRA_FLAGS  # x\n```\n"
    assert mygpt_commands(text) == [(2, ["generate", "--checkpoint", "ckpt", "--top-k", "$K"])]
    assert not bad_commands(Path("p.md"), text)


def test_good_command_lines_pass():
    assert command_error(["train", "notes.txt", "--steps", "$N", "--lora-targets", "q,v"]) is None
    assert command_error(["tokenizer", "train", "--help"]) is None
    assert command_error(["serve", "--checkpoint", "m.safetensors"]) is None


def test_ci_command_mismatch_is_reported():
    ci = "#!/bin/sh\n# uv run pytest -x (a comment)\nuv run pytest\n"
    assert ci_test_command(ci) == "uv run pytest"
    readme = "# x\n\n```bash\nuv run mygpt train   # trains\nuv run pytest -q\n```\n"
    assert readme_setup_commands(readme) == ["uv run mygpt train", "uv run pytest -q"]
    with pytest.raises(AssertionError):
        ci_test_command("uv run pytest\nuv run pytest parity_tests\n")


def test_issue_numbers_and_unlinked_pages_are_reported(tmp_path):
    text = "Issue 6 measured it.\nSee #20 and [x](#section-2) and issues 21.\nA&#32;b"
    assert [e.split(": ")[1] for e in issue_numbers(text)] == ["'Issue 6'", "'#20'", "'issues 21'"]
    (tmp_path / "docs").mkdir()
    pages = [tmp_path / "docs" / "a.md", tmp_path / "docs" / "b.md"]
    (tmp_path / "README.md").write_text("[a](docs/a.md#top)\n", encoding="utf-8")
    assert unlinked_pages(tmp_path / "README.md", pages) == ["b.md"]
